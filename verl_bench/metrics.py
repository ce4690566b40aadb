"""The names of what the training loop reports, in one place: the loop's tests check its rows against this
list, and the sweep checks a sweep file's metric against it (``verl_bench.sweep.spec.KNOWN_METRICS``).
No torch here, so reading the names costs nothing."""

from __future__ import annotations

# every training step's row
STEP_METRICS = (
    "step", "config_version",
    "reward/mean", "reward/std", "accuracy", "response_length",
    "groups/all_equal",  # share of prompt groups with all-equal rewards: zero advantage, no VERL bonus possible
    "response/truncated",  # share of responses cut at max_new_tokens before EOS
    "rank/er", "rank/erv", "rank/era",
    # ShapingOutput.log_dict: Phi, the ERA gate, lambda, whether shaping acted, each metric's relative deviation
    "verl/phi_mean", "verl/beta_mean", "verl/lambda", "verl/active", "verl/rd_ERA", "verl/rd_ERV", "verl/rd_ER",
    "verl/frac_shaped",
    "loss", "grad_norm", "clip_frac", "train/nonfinite_steps",  # loss, grad_norm: means over the mini-batches
    "time/step_s", "time/generate_s", "time/reward_s", "time/update_s", "tokens_per_s", "memory/peak_rss_gb",
)
# in a step's row only when they mean something
OPTIONAL_METRICS = (
    "verl/mu_ERA", "verl/mu_ERV", "verl/mu_ER",  # the baselines Phi compared with (absent until one exists)
    "kl",  # only with algo.kl_coef > 0 (there is no reference policy otherwise)
    "entropy",  # only with algo.entropy_coef > 0 (not computed otherwise; a 0.0 would read as collapse)
    "memory/peak_cuda_gb",  # on CUDA
    # rollout.engine vllm: |log p_vllm - log p_policy| over response tokens, the k3 KL(vllm || policy), and with
    # algo.tis_cap the mean truncated importance weight and the share of tokens the cap truncated
    "rollout/logp_diff_mean", "rollout/logp_diff_max", "rollout/kl_k3", "rollout/tis_mean", "rollout/tis_capped_frac",
)
# the held-out validation: step 0, every eval_every steps and the last step
VALIDATION_METRICS = ("val/accuracy", "val/problems", "val/response_length")

METRIC_NAMES = STEP_METRICS + OPTIONAL_METRICS + VALIDATION_METRICS
