"""The study file: a strict YAML format, validated (file:line: key) before Ray starts. See the package doc."""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from verl_bench.config import ConfigError, TrainConfig, _merge, from_dict
from verl_bench.sweep.spec import _field_type, _flat, _load_base, _nest, read_yaml_file

STUDIES = Path(__file__).resolve().parents[2] / "studies"
TOP_KEYS = ("name", "storage", "report", "base", "budget", "models", "arms", "seeds", "evaluation", "primary",
            "resources", "max_concurrent", "max_failures")
MODEL_KEYS = ("model", "template", "overrides")
EVAL_KEYS = ("benchmarks", "preset", "n", "k", "temperature", "top_p", "max_tokens", "limit", "checkpoint",
             "select_metric", "base", "resources", "batch_size", "backend", "vllm")
BACKENDS = ("auto", "hf", "vllm", "sampler")  # verl_bench.evaluate.run.make_lm
PRIMARY_KEYS = ("benchmark", "metric", "compare")
BUDGET_KEYS = ("steps",)
# what the primary endpoint may measure: the per-sample accuracy (the mean of `correct`, = pass@1 estimated
# from n samples), which the statistics module compares between arms with seeds and problems as factors
PRIMARY_METRICS = ("accuracy",)
AVERAGE = "average"  # primary benchmark: the unweighted mean over the study's benchmarks
BASE_ARM = "base"  # the untrained base model's rows in the per-sample table
# keys a study sets itself in every trial: an arm or a model's overrides may not
STUDY_SET = ("model", "seed", "run_dir", "steps", "data.template")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass
class ModelEntry:
    key: str  # the name the study and its report use, e.g. "qwen2.5-7b"
    spec: str  # a model spec (verl_bench.models): hub id, local folder, embedded default, tiny:...
    template: str  # the prompt template it is trained and evaluated with
    overrides: dict = field(default_factory=dict)  # dotted TrainConfig keys for this model's trials


@dataclass
class Trial:
    model: str
    arm: str
    seed: int
    config: dict  # the full, validated TrainConfig as a dict (run_dir is set inside the trial's folder)

    @property
    def key(self) -> str:
        return cell_key(self.model, self.arm, self.seed)


def cell_key(model: str, arm: str, seed) -> str:
    return f"{model}/{arm}/{seed}"


@dataclass
class StudySpec:
    source: str
    name: str
    base: dict  # the validated base TrainConfig as a dict
    models: list[ModelEntry]
    arms: dict[str, dict]  # arm name -> dotted overrides
    seeds: list[int]
    steps: int
    benchmarks: list[str]
    preset: object  # verl_bench.evaluate.presets.EvalPreset with the study's overrides
    checkpoint: str = "last"  # last | best
    select_metric: str = "val/accuracy"
    evaluate_base: bool = True
    primary_benchmark: str = AVERAGE
    primary_metric: str = "accuracy"
    compare: tuple[str, str] = ("", "")  # arm_a, arm_b: the primary comparison is a - b
    cpu: float = 1.0  # per trial
    gpu: float = 0.0
    eval_cpu: float | None = None  # per evaluation task (None: the evaluation machinery's default)
    eval_gpu: float | None = None
    eval_batch_size: int | None = None
    eval_backend: str = "auto"
    eval_vllm: dict = field(default_factory=dict)  # the vllm backend's options (VLLMOptions fields)
    max_concurrent: int = 1
    max_failures: int = 0
    storage: str | None = None
    report: str | None = None  # the report's folder (default: <study folder>/report)
    trials: list[Trial] = field(default_factory=list)
    lines: dict = field(default_factory=dict, repr=False)

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"

    def model(self, key: str) -> ModelEntry:
        return next(m for m in self.models if m.key == key)

    @property
    def workers(self) -> int:
        return self.base["ray"]["num_workers"]

    def study_dir(self, storage: str | None = None) -> Path:
        return Path(storage or self.storage or "runs/studies").resolve() / self.name


# ------------------------------------------------------------------------------------------ loading
def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; raises ConfigError naming file:line: key. Resolves no model, starts
    nothing: every trial's TrainConfig is built and validated here."""
    from verl_bench.data import PROMPT_TEMPLATES
    from verl_bench.evaluate.presets import PRESETS
    from verl_bench.evaluate.tasks import EVAL_SETS

    path = Path(path)
    source = str(path)
    raw, lines, where, fail = read_yaml_file(path, "study")

    _known(raw, TOP_KEYS, "", fail)
    for key in ("base", "models", "arms", "seeds", "evaluation", "primary"):
        if key not in raw:
            raise ConfigError(f"{source}: missing required key {key!r}")

    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not _NAME.match(name):
        fail("name", f"expected a folder name (letters, digits, . _ + -), got {name!r}")
    storage, report = (_folder(raw, key, path, fail) for key in ("storage", "report"))
    base = _load_base(raw["base"], path, lines, where)

    budget = _section(raw, "budget", BUDGET_KEYS, fail)
    steps = budget.get("steps", base["steps"])
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        fail("budget.steps", f"expected an integer >= 1 (training steps per trial), got {steps!r}")

    # --- models
    models_raw = raw["models"]
    if not isinstance(models_raw, dict) or not models_raw:
        fail("models", "expected a mapping of model names to {model: SPEC, template: NAME}")
    models = []
    for key, entry in models_raw.items():
        loc = f"models.{key}"
        if not isinstance(key, str) or not _NAME.match(key):
            fail(loc, "a model name must be a folder name (letters, digits, . _ + -)")
        if not isinstance(entry, dict):
            fail(loc, f"expected a mapping with keys {list(MODEL_KEYS)}, got {entry!r}")
        _known(entry, MODEL_KEYS, f"{loc}.", fail)
        spec = entry.get("model")
        if not isinstance(spec, str) or not spec.strip():
            fail(f"{loc}.model" if "model" in entry else loc, f"expected a model spec (hub id, folder, "
                                                             f"smollm2-135m-instruct, tiny:...), got {spec!r}")
        template = entry.get("template", base["data"]["template"])
        if template not in PROMPT_TEMPLATES:
            close = difflib.get_close_matches(str(template), PROMPT_TEMPLATES, n=1)
            fail(f"{loc}.template", f"unknown prompt template {template!r}"
                                    f"{f' (did you mean {close[0]!r}?)' if close else ''}; known: {list(PROMPT_TEMPLATES)}")
        models.append(ModelEntry(key, spec.strip(), template,
                                 _overrides(entry.get("overrides"), f"{loc}.overrides", fail)))

    # --- arms
    arms_raw = raw["arms"]
    if not isinstance(arms_raw, dict) or not arms_raw:
        fail("arms", "expected a mapping of arm names to config overrides, e.g. {grpo: {shaping.enabled: false}}")
    arms = {}
    for arm, over in arms_raw.items():
        if not isinstance(arm, str) or not _NAME.match(arm):
            fail(f"arms.{arm}", "an arm name must be a folder name (letters, digits, . _ + -)")
        if arm == BASE_ARM:
            fail(f"arms.{arm}", f"{BASE_ARM!r} names the untrained model's rows (evaluation.base): pick another name")
        arms[arm] = _overrides(over, f"arms.{arm}", fail)

    # --- seeds
    seeds = raw["seeds"]
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        fail("seeds", f"expected a list of integer seeds, e.g. [0, 1, 2], got {seeds!r}")
    if (not isinstance(seeds, list) or not seeds
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        fail("seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        fail("seeds", f"seeds repeat: {seeds}")

    # --- evaluation
    ev = _section(raw, "evaluation", EVAL_KEYS, fail)
    benchmarks = ev.get("benchmarks")
    if isinstance(benchmarks, str):
        benchmarks = [benchmarks]
    if not isinstance(benchmarks, list) or not benchmarks:
        fail("evaluation.benchmarks" if "benchmarks" in ev else "evaluation",
             "expected a non-empty list of benchmarks")
    for b in benchmarks:
        if b not in EVAL_SETS:
            close = difflib.get_close_matches(str(b), EVAL_SETS, n=1)
            fail("evaluation.benchmarks", f"unknown benchmark {b!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                          f"known: {list(EVAL_SETS)}")
    if len(set(benchmarks)) != len(benchmarks):
        fail("evaluation.benchmarks", f"benchmarks repeat: {benchmarks}")
    preset_name = ev.get("preset", "paper")
    if preset_name not in PRESETS:
        close = difflib.get_close_matches(str(preset_name), PRESETS, n=1)
        fail("evaluation.preset", f"unknown preset {preset_name!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                  f"known: {list(PRESETS)}")
    ks = ev.get("k")
    if ks is not None and (not isinstance(ks, list) or any(isinstance(k, bool) or not isinstance(k, int) for k in ks)):
        fail("evaluation.k", f"expected a list of integers, got {ks!r}")
    for k in ("n", "max_tokens", "limit", "batch_size"):
        v = ev.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            fail(f"evaluation.{k}", f"expected an integer >= 1, got {v!r}")
    for k in ("temperature", "top_p"):
        v = ev.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            fail(f"evaluation.{k}", f"expected a number, got {v!r}")
    try:
        preset = PRESETS[preset_name].with_overrides(
            n=ev.get("n"), ks=ks, temperature=ev.get("temperature"), top_p=ev.get("top_p"),
            max_tokens=ev.get("max_tokens"), limit=ev.get("limit"))
    except ValueError as e:
        fail("evaluation", str(e))
    checkpoint = ev.get("checkpoint", "last")
    if checkpoint not in ("last", "best"):
        fail("evaluation.checkpoint", f"expected last or best (by validation), got {checkpoint!r}")
    select_metric = ev.get("select_metric", "val/accuracy")
    if not isinstance(select_metric, str) or not select_metric.startswith("val/"):
        fail("evaluation.select_metric", f"expected a validation metric (val/...), got {select_metric!r}")
    evaluate_base = ev.get("base", True)
    if not isinstance(evaluate_base, bool):
        fail("evaluation.base", f"expected true or false (evaluate the untrained models too), got {evaluate_base!r}")
    backend = ev.get("backend", "auto")
    if backend not in BACKENDS:
        fail("evaluation.backend", f"expected one of {list(BACKENDS)}, got {backend!r}")
    eval_vllm = ev.get("vllm") or {}
    if not isinstance(eval_vllm, dict):
        fail("evaluation.vllm", "expected a mapping of the training config's rollout.vllm keys")
    from verl_bench.rollout_vllm import EVAL_GPU_MEMORY_UTILIZATION, VLLMOptions

    opts = from_dict(VLLMOptions, {"gpu_memory_utilization": EVAL_GPU_MEMORY_UTILIZATION, **eval_vllm},
                     source=source, lines=lines, prefix="evaluation.vllm.")
    for ok, key, why in opts.checks(prefix="evaluation.vllm"):
        if not ok:
            fail(key, why)
    eval_res = ev.get("resources") or {}
    if not isinstance(eval_res, dict):
        fail("evaluation.resources", "expected a mapping {cpu: N, gpu: N}")
    _known(eval_res, ("cpu", "gpu"), "evaluation.resources.", fail)

    # --- primary endpoint
    primary = _section(raw, "primary", PRIMARY_KEYS, fail)
    p_bench = primary.get("benchmark", AVERAGE)
    if p_bench != AVERAGE and p_bench not in benchmarks:
        fail("primary.benchmark", f"{p_bench!r} is not among evaluation.benchmarks {benchmarks} "
                                  f"(or {AVERAGE!r}: their unweighted mean)")
    p_metric = primary.get("metric", "accuracy")
    if p_metric not in PRIMARY_METRICS:
        fail("primary.metric", f"unknown metric {p_metric!r}; the primary endpoint may be {list(PRIMARY_METRICS)} "
                               "(the mean of per-sample correctness, with seeds and problems as factors)")
    arm_names = list(arms) + ([BASE_ARM] if evaluate_base else [])
    compare = primary.get("compare")
    if compare is None:
        if len(arms) != 2:
            fail("primary", f"name the comparison: compare: [ARM_A, ARM_B] (A - B), from {arm_names}")
        compare = list(arms)[::-1]
    if not isinstance(compare, list) or len(compare) != 2 or compare[0] == compare[1]:
        fail("primary.compare", f"expected two different arm names [A, B] (the endpoint is A - B), got {compare!r}")
    for a in compare:
        if a not in arm_names:
            close = difflib.get_close_matches(str(a), arm_names, n=1)
            fail("primary.compare", f"unknown arm {a!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                    f"arms: {arm_names}")

    study = StudySpec(source=source, name=name, base=base, models=models, arms=arms, seeds=list(seeds),
                      steps=steps, benchmarks=list(benchmarks), preset=preset, checkpoint=checkpoint,
                      select_metric=select_metric, evaluate_base=evaluate_base, primary_benchmark=p_bench,
                      primary_metric=p_metric, compare=(compare[0], compare[1]), storage=storage, report=report,
                      lines=lines,
                      eval_batch_size=ev.get("batch_size"), eval_backend=backend,
                      eval_vllm=dataclasses.asdict(opts))
    for k in ("cpu", "gpu"):
        v = eval_res.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0):
            fail(f"evaluation.resources.{k}", f"expected a number >= 0, got {v!r}")
        setattr(study, f"eval_{k}", None if v is None else float(v))

    # --- scheduling
    for key, lo, default in (("max_concurrent", 1, 1), ("max_failures", -1, 0)):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            fail(key, f"expected an integer >= {lo}, got {v!r}")
        setattr(study, key, v)
    res = _section(raw, "resources", ("cpu", "gpu"), fail)
    workers = base["ray"]["num_workers"]
    study.cpu = res.get("cpu", 0.0 if workers > 1 else 1.0)
    study.gpu = res.get("gpu", 0.0)
    for k in ("cpu", "gpu"):
        v = getattr(study, k)
        zero_ok = k == "gpu" or workers > 1
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and not zero_ok):
            fail(f"resources.{k}", f"expected a number {'>= 0' if zero_ok else '> 0'}, got {v!r}")
        setattr(study, k, float(v))

    # --- every trial's config, validated now
    for m in models:
        for arm, over in arms.items():
            for seed in seeds:
                cfg = _trial_config(study, m, arm, over, seed, where)
                study.trials.append(Trial(m.key, arm, seed, cfg))
    if checkpoint == "best":
        if base["keep_checkpoints"] != 0:
            fail("evaluation.checkpoint", "best-by-validation picks among every checkpoint: set keep_checkpoints: 0 "
                                          "in the base config (else the best may be deleted)")
        if base["eval_every"] == 0 or base["data"]["eval_size"] == 0:
            fail("evaluation.checkpoint", "best-by-validation needs validation at checkpoint steps: set eval_every "
                                          "(a multiple of checkpoint_every) and data.eval_size > 0 in the base config")
    return study


def _trial_config(study: StudySpec, m: ModelEntry, arm: str, arm_over: dict, seed: int, where) -> dict:
    """base <- the model's overrides <- the arm's <- what the study sets (model, template, seed, steps)."""
    fixed = {"model": m.spec, "data.template": m.template, "seed": seed, "steps": study.steps}
    merged = _merge(_merge(_merge(study.base, _nest(m.overrides)), _nest(arm_over)), _nest(fixed))
    try:
        return from_dict(TrainConfig, merged, source=f"{study.source} ({cell_key(m.key, arm, seed)})").to_dict()
    except ConfigError as e:
        msg = str(e).split(": ", 1)[-1]
        raise ConfigError(f"{where(f'arms.{arm}')}: model {m.key}, arm {arm}, seed {seed} gives an invalid "
                          f"config: {msg}") from None


def _folder(raw: dict, key: str, path: Path, fail) -> str | None:
    """An optional folder key; relative to the study file."""
    v = raw.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        fail(key, f"expected a folder, got {v!r}")
    return v if os.path.isabs(v) else str((path.parent / v).resolve())


def _overrides(over, loc: str, fail) -> dict:
    """Dotted TrainConfig keys (nested mappings are flattened) -> values; each key checked against the config."""
    if over is None:
        return {}
    if not isinstance(over, dict):
        fail(loc, f"expected a mapping of dotted config keys to values, e.g. {{shaping.enabled: false}}, got {over!r}")
    flat = _flat(over)
    for key in flat:
        tp = _field_type(key)
        if isinstance(tp, str):
            fail(f"{loc}.{key}", tp)
        if key in STUDY_SET:
            fail(f"{loc}.{key}", f"{key} is set by the study (models.*.model/template, seeds, budget.steps; "
                                 "run_dir inside each trial's folder): remove it here")
    return flat


def _known(raw: dict, keys: tuple, prefix: str, fail) -> None:
    for k in raw:
        if k not in keys:
            close = difflib.get_close_matches(str(k), keys, n=1)
            fail(f"{prefix}{k}", f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                 f"known keys here: {list(keys)}")


def _section(raw: dict, name: str, keys: tuple, fail) -> dict:
    sec = raw.get(name)
    if sec is None:
        return {}
    if not isinstance(sec, dict):
        fail(name, f"expected a mapping with keys {list(keys)}")
    _known(sec, keys, f"{name}.", fail)
    return sec
