"""The one base class of the errors a user should see as a single line (bad config, data, study or sweep
file, missing model, bad CLI usage). The CLI prints ``error: <message>`` and exits 2 for these; anything
else is a bug and keeps its traceback."""


class UserError(ValueError):
    """Bad input from the user: the message names the file, line and key at fault, and what to do."""
