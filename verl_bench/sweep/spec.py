"""The sweep file: a strict YAML format, validated (file:line: key) before Ray starts. See the package doc."""


from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from verl_bench.config import ConfigError, TrainConfig, _key_lines, _merge, from_dict, load_config, yaml_error

SEARCH_SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "grid")
ALGOS = ("optuna", "random", "grid")
SCHEDULER_KEYS = {  # the keys each scheduler kind reads besides `kind`
    "asha": ("grace_period", "max_t"),
    "pbt": ("perturbation_interval", "hyperparam_mutations", "quantile_fraction", "resample_probability"),
    "none": (),
}
TOP_KEYS = ("base", "space", "search", "scheduler", "metric", "mode", "num_samples", "resources",
            "max_concurrent", "max_failures", "name", "storage")
# what verl_bench.train.train reports (val/* only at eval steps and the last step)
from verl_bench.metrics import METRIC_NAMES as KNOWN_METRICS

# Keys PBT may change when it restarts a trial from another trial's checkpoint: train() reads them afresh at
# every (re)start and the checkpoint holds nothing that depends on them (it re-applies lr and weight decay
# after loading the optimizer state). Every other key fixes what a checkpoint means (model, data, seed,
# rollout sizes, the rank window, the shaper's baseline init, steps...) and must stay constant within a run.
PBT_MUTABLE = ("algo.lr", "algo.weight_decay", "algo.max_grad_norm", "algo.clip_low", "algo.clip_high",
               "algo.kl_coef", "algo.entropy_coef", "rollout.temperature", "rollout.top_p",
               "shaping.alpha", "shaping.gain", "shaping.tau", "shaping.gate", "shaping.mode", "shaping.lam",
               "shaping.lambda_mode", "shaping.kappa", "shaping.placement", "shaping.target", "shaping.clip")


@dataclass
class Dim:
    key: str  # dotted TrainConfig key
    kind: str  # one of DISTRIBUTIONS
    args: list

    def contains(self, v) -> bool:
        if self.kind in ("choice", "grid"):
            return v in self.args
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.kind == "int" and not isinstance(v, int):
            return False
        return self.args[0] <= v <= self.args[1]


@dataclass
class SweepSpec:
    source: str
    base: dict  # a full, validated TrainConfig as a dict
    space: list[Dim]
    algo: str = "optuna"
    search_seed: int | None = 0
    points_to_evaluate: list[dict] = field(default_factory=list)  # dotted key -> value, complete points
    scheduler: str = "none"
    grace_period: int = 1
    max_t: int | None = None
    perturbation_interval: int = 0  # PBT, in training steps
    mutations: list[Dim] = field(default_factory=list)  # PBT: what it may change, and within which bounds
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    metric: str | list[str] = "val/accuracy"  # a list: multi-objective (Optuna only)
    mode: str | list[str] = "max"
    num_samples: int = 1
    cpu: float = 1.0  # per trial: its own process (with ray.num_workers > 1, the driver of its Train workers)
    gpu: float = 0.0
    max_concurrent: int = 1
    max_failures: int = 0
    name: str = "sweep"
    storage: str | None = None
    lines: dict = field(default_factory=dict, repr=False)  # dotted key -> line in the sweep file

    def where(self, key: str) -> str:
        """``file:line: key`` for messages about this sweep file."""
        line = self.lines.get(key)
        return f"{self.source}:{line}: {key}" if line else f"{self.source}: {key}"

    @property
    def metrics(self) -> list[str]:
        return list(self.metric) if isinstance(self.metric, list) else [self.metric]

    @property
    def modes(self) -> list[str]:
        return list(self.mode) if isinstance(self.mode, list) else [self.mode]

    @property
    def workers(self) -> int:
        """Ray Train workers per trial (1: the trial trains in its own process)."""
        return self.base["ray"]["num_workers"]

    @property
    def population(self) -> int:
        """Trials the search creates: num_samples, times the grid's size for grid dimensions."""
        n = self.num_samples
        for d in self.space:
            if d.kind == "grid" or (d.kind == "choice" and self.algo == "grid"):
                n *= len(d.args)
        return n

    def trial_config(self, sampled: dict) -> TrainConfig:
        """The base config with dotted ``sampled`` values applied, validated."""
        return from_dict(TrainConfig, _merge(self.base, _nest(sampled)), source=f"{self.source} (sampled {sampled})")


# ------------------------------------------------------------------------------------------ loading
def read_yaml_file(path: Path, what: str) -> tuple[dict, dict, Callable, Callable]:
    """A strict YAML file's top-level mapping, the line of every dotted key, and ``where(key)`` /
    ``fail(key, why)`` for ``file:line: key`` messages (sweep and study files)."""
    source = str(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    text = path.read_text()
    try:
        raw = yaml.safe_load(text)
        lines = _key_lines(text) if raw else {}
    except yaml.YAMLError as e:
        raise yaml_error(source, e) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")

    def where(key: str) -> str:
        line = lines.get(key)
        return f"{source}:{line}: {key}" if line else f"{source}: {key}"

    def fail(key: str, why: str):
        raise ConfigError(f"{where(key)}: {why}")

    return raw, lines, where, fail


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep file; raises ConfigError naming file:line: key. Starts nothing."""
    path = Path(path)
    source = str(path)
    raw, lines, where, fail = read_yaml_file(path, "sweep")

    if "seed_repeats" in raw:
        fail("seed_repeats", "seed repeats inside a trial are gone: make the seed a grid dimension "
                             "(space: {seed: {grid: [0, 1, 2]}}, the report aggregates seeds) or write a study "
                             "file (studies/*.yaml: models x arms x seeds)")
    for key in raw:
        if key not in TOP_KEYS:
            close = difflib.get_close_matches(str(key), TOP_KEYS, n=1)
            fail(str(key), f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                           f"known keys: {sorted(TOP_KEYS)}")
    for key in ("base", "space"):
        if key not in raw:
            raise ConfigError(f"{source}: missing required key {key!r}")

    spec = SweepSpec(source=source, base={}, space=[], name=path.stem, lines=lines)
    spec.base = _load_base(raw["base"], path, lines, where)

    # --- scalars
    def integer(key, lo, default):
        v = raw.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            fail(key, f"expected an integer >= {lo}, got {v!r}")
        return v

    spec.num_samples = integer("num_samples", 1, 1)
    spec.max_concurrent = integer("max_concurrent", 1, 1)
    spec.max_failures = integer("max_failures", -1, 0)
    spec.metric, spec.mode = _parse_objectives(raw.get("metric", spec.metric), raw.get("mode", spec.mode), fail)
    if spec.base["data"]["eval_size"] == 0 and any(m.startswith("val/") for m in spec.metrics):
        fail("metric", "val/* metrics come from the held-out validation, which the base config turns off "
                       "(data.eval_size: 0)")
    for key in ("name", "storage"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                fail(key, f"expected a non-empty string, got {raw[key]!r}")
            setattr(spec, key, raw[key])
    if spec.storage is not None and not os.path.isabs(spec.storage):
        spec.storage = str((path.parent / spec.storage).resolve())

    # --- space
    space = raw["space"]
    if not isinstance(space, dict) or not space:
        fail("space", "expected a non-empty mapping of dotted config keys to distributions")
    for key, dist in space.items():
        if str(key).startswith("ray."):
            fail(f"space.{key}", "ray.* keys decide how every trial runs and are fixed for a sweep: set them "
                                 "in the base config")
        spec.space.append(_parse_dim(spec, str(key), dist, f"space.{key}", where, fail))

    _parse_search(spec, raw, where, fail)
    if len(spec.metrics) > 1 and spec.algo != "optuna":
        fail("metric", "a list of metrics is a multi-objective search, which needs search.algo optuna "
                       f"(search.algo {spec.algo} does not use the metric): name one metric")
    _parse_scheduler(spec, raw, where, fail)
    _parse_resources(spec, raw, fail)
    return spec


def _parse_objectives(metric, mode, fail) -> tuple:
    """``metric``/``mode``: one name and max|min, or equal-length lists (a multi-objective Optuna search)."""
    names = metric if isinstance(metric, list) else [metric]
    if not names:
        fail("metric", "expected a metric name or a non-empty list of them")
    for m in names:
        if not isinstance(m, str) or not (m in KNOWN_METRICS or m.startswith(("val/", "time/", "memory/"))):
            close = difflib.get_close_matches(str(m), KNOWN_METRICS, n=1)
            fail("metric", f"unknown metric {m!r}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                           "train reports the names in verl_bench/metrics.py")  # all 60 would not be one line
    if len(set(names)) != len(names):
        fail("metric", f"names a metric twice: {names}")
    modes = mode if isinstance(mode, list) else [mode]
    if isinstance(metric, list) != isinstance(mode, list) or len(modes) != len(names):
        fail("mode", f"needs one mode (max or min) per metric: {len(names)} metric(s) {names}, got {mode!r}")
    for m in modes:
        if m not in ("max", "min"):
            fail("mode", f"must be max or min, got {m!r}")
    return (names[0], modes[0]) if len(names) == 1 else (names, modes)


def _parse_search(spec: SweepSpec, raw: dict, where, fail) -> None:
    search = _section(raw, "search", ("algo", "seed", "points_to_evaluate"), fail)
    spec.algo = search.get("algo", "optuna")
    if spec.algo not in ALGOS:
        fail("search.algo", f"must be one of {list(ALGOS)}, got {spec.algo!r}")
    spec.search_seed = search.get("seed", 0)
    if spec.search_seed is not None and (isinstance(spec.search_seed, bool) or not isinstance(spec.search_seed, int)):
        fail("search.seed", f"expected an integer, got {spec.search_seed!r}")
    for d in spec.space:
        if spec.algo == "optuna" and d.kind == "grid":
            fail(f"space.{d.key}", "grid is not supported with search.algo optuna (OptunaSearch rejects "
                                   "grid_search); use choice, or search.algo grid/random")
        if spec.algo == "optuna" and d.kind == "choice" and any(
                v is not None and not isinstance(v, (bool, int, float, str)) for v in d.args):
            fail(f"space.{d.key}", "Optuna choices must be scalars (numbers, strings, booleans)")
        if spec.algo == "grid" and d.kind not in ("grid", "choice"):
            fail(f"space.{d.key}", f"search.algo grid needs grid or choice values, got {d.kind}")
    points = search.get("points_to_evaluate")
    if points is not None:
        if spec.algo == "grid":
            fail("search.points_to_evaluate", "not used by grid search")
        if not isinstance(points, list):
            fail("search.points_to_evaluate", "expected a list of mappings")
        keys = {d.key: d for d in spec.space}
        for i, p in enumerate(points):
            k = f"search.points_to_evaluate[{i}]"
            if not isinstance(p, dict):
                fail("search.points_to_evaluate", f"point {i} is not a mapping: {p!r}")
            extra = sorted(set(map(str, p)) - set(keys))
            missing = sorted(set(keys) - set(map(str, p)))
            if extra:
                fail("search.points_to_evaluate", f"point {i}: keys not in space: {extra}")
            if missing and spec.algo == "optuna":
                fail("search.points_to_evaluate", f"point {i}: Optuna needs every space key; missing {missing}")
            for key, v in p.items():
                if not keys[key].contains(v):
                    fail("search.points_to_evaluate", f"point {i}: {key}={v!r} lies outside its space")
            _check_config(spec, dict(p), where("search.points_to_evaluate"), k)
            spec.points_to_evaluate.append(dict(p))
    elif spec.algo == "optuna":
        point = {d.key: _get_dotted(spec.base, d.key) for d in spec.space}
        if all(d.contains(point[d.key]) for d in spec.space):
            spec.points_to_evaluate = [point]  # the base config's (paper's) values are tried first


def _parse_scheduler(spec: SweepSpec, raw: dict, where, fail) -> None:
    every = tuple(k for keys in SCHEDULER_KEYS.values() for k in keys)
    sched = _section(raw, "scheduler", ("kind", *every), fail)
    spec.scheduler = sched.get("kind", "none")
    if spec.scheduler not in SCHEDULER_KEYS:
        fail("scheduler.kind", f"must be one of {list(SCHEDULER_KEYS)}, got {spec.scheduler!r}")
    for k in sched:
        if k != "kind" and k not in SCHEDULER_KEYS[spec.scheduler]:
            fail(f"scheduler.{k}", f"not used by scheduler kind {spec.scheduler} (its keys: "
                                   f"{list(SCHEDULER_KEYS[spec.scheduler])})")
    spec.grace_period = sched.get("grace_period", 1)
    spec.max_t = sched.get("max_t", spec.base["steps"])
    for k in ("grace_period", "max_t"):
        v = getattr(spec, k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            fail(f"scheduler.{k}", f"expected an integer >= 1 (training steps), got {v!r}")
    if spec.grace_period > spec.max_t:
        fail("scheduler.grace_period", f"must be <= max_t ({spec.max_t})")
    if spec.scheduler == "pbt":
        _parse_pbt(spec, sched, raw, where, fail)


def _parse_pbt(spec: SweepSpec, sched: dict, raw: dict, where, fail) -> None:
    """PBT restarts its worst trials from its best trials' checkpoints with mutated configs: check that the
    mutated keys can change mid-run and that a checkpoint exists at every perturbation step."""
    if spec.algo == "optuna":
        fail("search.algo", "PBT explores by mutating its population's configs and Tune does not combine it "
                            "with a searcher: use search.algo random (or grid)")
    if spec.workers > 1:
        fail("base", "PBT needs Tune checkpoints, which trials with Ray Train workers (ray.num_workers > 1) do "
                     "not give Tune: use ray.num_workers: 1, or scheduler kind asha/none")
    steps, every = spec.base["steps"], spec.base["checkpoint_every"]
    interval = sched.get("perturbation_interval")
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        fail("scheduler.perturbation_interval" if "perturbation_interval" in sched else "scheduler",
             f"PBT needs perturbation_interval: an integer >= 1 (training steps), got {interval!r}")
    if interval >= steps:
        fail("scheduler.perturbation_interval", f"must be < the base config's steps ({steps}), else no trial "
                                                "is ever perturbed")
    if every == 0 or interval % every:
        fail("scheduler.perturbation_interval", f"must be a multiple of the base config's checkpoint_every "
                                                f"({every}): PBT clones the checkpoint a trial reported at the "
                                                "perturbation step, so there must be one at that step")
    spec.perturbation_interval = interval
    keep = spec.base["keep_checkpoints"]
    if 0 < keep < 3:
        fail("base", f"keep_checkpoints {keep}: PBT needs 0 (all) or >= 3, so that a donor's checkpoint is not "
                     "deleted before the trial that clones it has loaded it")
    for k, lo, hi in (("quantile_fraction", 0.0, 0.5), ("resample_probability", 0.0, 1.0)):
        v = sched.get(k, getattr(spec, k))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi or (
                k == "quantile_fraction" and v == 0):
            fail(f"scheduler.{k}", f"expected a number in {'(' if k == 'quantile_fraction' else '['}{lo}, {hi}], "
                                   f"got {v!r}")
        setattr(spec, k, float(v))

    mutations = sched.get("hyperparam_mutations")
    if mutations is None:
        spec.mutations = list(spec.space)  # default: PBT may move every swept key within its space
    else:
        if not isinstance(mutations, dict) or not mutations:
            fail("scheduler.hyperparam_mutations", "expected a mapping of dotted config keys to distributions")
        for key, dist in mutations.items():
            spec.mutations.append(_parse_dim(spec, str(key), dist, f"scheduler.hyperparam_mutations.{key}",
                                             where, fail))
    for d, loc in [(d, f"space.{d.key}") for d in spec.space] + [
            (d, f"scheduler.hyperparam_mutations.{d.key}") for d in (spec.mutations if mutations else [])]:
        if d.key not in PBT_MUTABLE:
            fail(loc, f"{d.key} cannot change in the middle of a run (PBT restarts trials from other trials' "
                      f"checkpoints with mutated values); keys PBT may change: {list(PBT_MUTABLE)}")
    for d in spec.mutations:
        if d.kind == "grid":
            fail(f"space.{d.key}" if mutations is None else f"scheduler.hyperparam_mutations.{d.key}",
                 "grid is not a mutation: use choice (PBT moves to a neighbouring value) or a range")
    if spec.population < 2:
        fail("num_samples", f"PBT needs a population of at least 2 trials, got {spec.population}")
    if "max_concurrent" in raw and spec.max_concurrent < spec.population:
        fail("max_concurrent", f"PBT keeps its whole population ({spec.population} trials) alive and pauses "
                               "those that do not fit the resources: set max_concurrent >= the population "
                               "or leave it out")
    spec.max_concurrent = spec.population


def _parse_resources(spec: SweepSpec, raw: dict, fail) -> None:
    """Per-trial resources. With ray.num_workers > 1 they are the trial's own process, which only drives its
    Train workers (each worker reserves ray.cpus_per_worker CPUs, and a GPU with ray.use_gpu, itself)."""
    train_workers = spec.workers > 1
    res = _section(raw, "resources", ("cpu", "gpu"), fail)
    for k in ("cpu", "gpu"):
        v = res.get(k, getattr(spec, k))
        zero_ok = k == "gpu" or train_workers
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (v == 0 and not zero_ok):
            fail(f"resources.{k}", f"expected a number {'>= 0' if zero_ok else '> 0'}, got {v!r}"
                 + ("" if zero_ok else " (cpu 0 is for trials that drive Ray Train workers: ray.num_workers > 1)"))
        setattr(spec, k, float(v))
    if train_workers:
        if spec.gpu > 0:
            fail("resources.gpu", "with ray.num_workers > 1 a trial's own process only drives its Train workers, "
                                  "which take GPUs through ray.use_gpu: leave resources.gpu at 0")
    elif spec.base["ray"]["use_gpu"] and spec.gpu == 0:
        fail("resources.gpu", "the base config sets ray.use_gpu but the trials ask for no GPU")


def check_resources(spec: SweepSpec, address: str | None = None, cpus: int | None = None) -> None:
    """Fail before Ray starts when a local sweep asks for CPUs or GPUs this machine does not have.

    A trial with Ray Train workers reserves its own ``resources`` and, once its Train run starts, the
    workers' CPUs (and GPUs) in a placement group of their own. Tune does not see the workers' share, so
    the check is that while ``max_concurrent`` trial processes hold their resources, one trial's workers
    still fit: otherwise every trial would wait for workers that can never start.
    """
    if address is not None:
        return  # a remote cluster: Ray itself reports unschedulable trials
    cpus = cpus or os.cpu_count() or 1
    ray_cfg = spec.base["ray"]
    if spec.workers > 1:
        need = spec.max_concurrent * spec.cpu + spec.workers * ray_cfg["cpus_per_worker"]
        if need > cpus:
            raise ConfigError(
                f"{spec.where('resources.cpu')}: {spec.max_concurrent} trial process(es) x {spec.cpu:g} CPU + "
                f"{spec.workers} Train workers x {ray_cfg['cpus_per_worker']} CPU = {need:g} CPUs, but this "
                f"machine has {cpus}: lower max_concurrent, ray.num_workers or ray.cpus_per_worker, or set "
                "resources.cpu to 0 (the trial process only waits on its workers)")
    elif spec.cpu > cpus:
        raise ConfigError(f"{spec.where('resources.cpu')}: {spec.cpu:g} per trial but this machine has "
                          f"{cpus} CPUs")
    gpus = spec.workers if spec.workers > 1 and ray_cfg["use_gpu"] else spec.gpu
    if gpus > 0:
        import torch

        have = torch.cuda.device_count()
        if gpus > have:
            key = "base" if spec.workers > 1 else "resources.gpu"
            raise ConfigError(f"{spec.where(key)}: {gpus:g} GPU(s) per trial but this machine has {have}")


def _section(raw: dict, name: str, keys: tuple, fail) -> dict:
    sec = raw.get(name) or {}
    if not isinstance(sec, dict):
        fail(name, f"expected a mapping with keys {list(keys)}")
    for k in sec:
        if k not in keys:
            close = difflib.get_close_matches(str(k), keys, n=1)
            fail(f"{name}.{k}", f"unknown key{f' (did you mean {close[0]!r}?)' if close else ''}; "
                                f"known keys here: {list(keys)}")
    return sec


def _load_base(base, path: Path, lines: dict, where) -> dict:
    def resolve(p: str) -> Path:
        cand = Path(p)
        if not cand.is_absolute() and not cand.is_file() and (path.parent / cand).is_file():
            cand = path.parent / cand
        if not cand.is_file():
            raise ConfigError(f"{where('base')}: config file {p!r} not found (relative to the sweep file or cwd)")
        return cand

    if isinstance(base, str):
        return load_config(resolve(base)).to_dict()
    if not isinstance(base, dict):
        raise ConfigError(f"{where('base')}: expected a config path or a TrainConfig mapping, got {base!r}")
    base = dict(base)
    start: dict = {}
    if "from" in base:
        start = load_config(resolve(str(base.pop("from")))).to_dict()
    sub = {k[len("base."):]: v for k, v in lines.items() if k.startswith("base.")}
    cfg = from_dict(TrainConfig, _merge(start, base), source=str(path), lines={f"{k}": v for k, v in sub.items()})
    return cfg.to_dict()


def _field_type(dotted: str):
    """The type of a dotted TrainConfig leaf field, or a string saying why there is none."""
    cls = TrainConfig
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            return f"{'.'.join(parts[:i])!r} is not a section"
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            close = difflib.get_close_matches(part, names, n=1)
            return f"not a TrainConfig key{f' (did you mean {close[0]!r}?)' if close else ''}; known here: {sorted(names)}"
        cls = typing.get_type_hints(cls)[part]
    if dataclasses.is_dataclass(cls):
        return "is a section, not a value: name one of its keys"
    return cls


def _is_int_type(tp) -> bool:
    if tp is int:
        return True
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return bool(args) and all(a is int for a in args)


def _parse_dim(spec: SweepSpec, key: str, dist, loc: str, where, fail) -> Dim:
    tp = _field_type(key)
    if isinstance(tp, str):
        fail(loc, tp)
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in DISTRIBUTIONS:
        fail(loc, f"expected one distribution, e.g. {{uniform: [lo, hi]}}; one of {list(DISTRIBUTIONS)}, "
                  f"got {dist!r}")
    kind, args = next(iter(dist.items()))
    if kind in ("uniform", "loguniform", "int"):
        num = int if kind == "int" else (int, float)
        if (not isinstance(args, list) or len(args) != 2
                or any(isinstance(a, bool) or not isinstance(a, num) for a in args)):
            fail(loc, f"{kind} needs [lo, hi] with {'integer' if kind == 'int' else 'numeric'} bounds, got {args!r}")
        lo, hi = args
        if not lo < hi and not (kind == "int" and lo == hi):
            fail(loc, f"{kind} needs lo < hi, got {args!r}")
        if kind == "loguniform" and lo <= 0:
            fail(loc, f"loguniform needs lo > 0, got {args!r}")
        if kind != "int" and _is_int_type(tp):
            fail(loc, f"{key} is an integer: use {{int: [lo, hi]}}, not {kind}")
        args = [float(lo), float(hi)] if kind != "int" else [lo, hi]
        candidates = args
    else:
        if not isinstance(args, list) or not args:
            fail(loc, f"{kind} needs a non-empty list of values, got {args!r}")
        candidates = args
    for v in candidates:  # every value a trial can get must build a valid TrainConfig
        _check_config(spec, {key: v}, where(loc), loc)
    return Dim(key, kind, list(args))


def _check_config(spec: SweepSpec, sampled: dict, where: str, loc: str) -> None:
    try:
        spec.trial_config(sampled)
    except ConfigError as e:  # "<file> (sampled {...}): key: why": the sample's values hold ": " too
        msg = str(e).split("): ", 1)[-1]
        raise ConfigError(f"{where}: {sampled} gives an invalid config: {msg}") from None


def _nest(dotted: dict) -> dict:
    out: dict = {}
    for key, v in dotted.items():
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    return out


def flatten(d: dict, prefix: str = "", sep: str = ".") -> dict:
    """A nested mapping as {"a.b.c": value} (the dotted keys configs, sweeps and reports use)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}{sep}", sep))
        else:
            out[f"{prefix}{k}"] = v
    return out


_flat = flatten


def _get_dotted(d: dict, key: str):
    for p in key.split("."):
        d = d[p]
    return list(d) if isinstance(d, tuple) else d


# ------------------------------------------------------------------------------------------ the trial
