"""verl-bench: a Ray Tune harness for VERL (rank-shaped GRPO)."""
__version__ = "0.1.0"
