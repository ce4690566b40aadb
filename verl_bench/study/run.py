"""Running a study: train the model x arm x seed grid (Ray Tune), evaluate the chosen checkpoints (Ray tasks
through ``verl_bench.evaluate``), then the per-sample table, the report and the primary endpoint's verdicts.

Every stage skips finished work, so a killed driver loses at most the step or benchmark it was in:
training skips complete runs (``sweep.finished_run``) and restores Tune's experiment; evaluation skips
benchmarks whose lm-eval files are complete; the table and the report are rebuilt from the files.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from verl_bench.config import ConfigError
from verl_bench.runfolder import config_changes
from verl_bench.study.spec import BASE_ARM, StudySpec, cell_key, load_study

TRIALS_FILE = "trials.json"
RESOLVED_FILE = "study_resolved.json"
SAMPLES_FILE = "samples.parquet"
SUMMARY_FILE = "summary.json"
TRAIN_DIR = "train"  # the Tune experiment
OOM_RESTARTS = 2  # restores of the training stage after Ray killed a trial for lack of memory
BASE_DIR = "base"


class StudyError(ConfigError):
    """A study folder that does not match its study file, or a stage that cannot start."""


@dataclass
class StudyResult:
    study_dir: Path
    report: Path | None = None
    verdicts: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ the plan
def describe(spec: StudySpec, storage: str | None = None) -> str:
    """The plan, as ``--dry-run`` prints it: nothing resolved, nothing started."""
    n = len(spec.trials)
    ray_cfg = spec.base["ray"]
    if spec.workers > 1:
        per = (f"{spec.workers} Ray Train workers x ({ray_cfg['cpus_per_worker']} CPUs"
               f"{' + 1 GPU' if ray_cfg['use_gpu'] else ''}), + {spec.cpu:g} CPU for the trial process")
        gpus = spec.workers if ray_cfg["use_gpu"] else 0
    else:
        per = f"{spec.cpu:g} CPU, {spec.gpu:g} GPU"
        gpus = spec.gpu
    p = spec.preset
    evals = n + (len(spec.models) if spec.evaluate_base else 0)
    head = (f"study {spec.name}: {len(spec.models)} model(s) x {len(spec.arms)} arm(s) x {len(spec.seeds)} "
            f"seed(s) = {n} trials of {spec.steps} steps, {spec.max_concurrent} at a time")
    evaluation = (f"  evaluation: {evals} model(s) ({spec.checkpoint} checkpoint of each trial"
                  f"{' + the base models' if spec.evaluate_base else ''}) x {len(spec.benchmarks)} benchmark(s) "
                  f"{spec.benchmarks}, preset {p.name} ({p.key()}: n={p.n}, k={list(p.ks)}, T={p.temperature:g})"
                  f"{f', {spec.eval_gpu:g} GPU per task' if spec.eval_gpu else ''}")
    lines = [
        head,
        "  models: " + ", ".join(f"{m.key} ({m.spec}, template {m.template})" for m in spec.models),
        "  arms: " + ", ".join(f"{a} {o or {}}" for a, o in spec.arms.items()),
        f"  seeds: {spec.seeds}",
        f"  per trial: {per}; {gpus * spec.max_concurrent:g} GPU(s) busy at once ({spec.max_concurrent} trial(s))",
        evaluation,
        f"  primary endpoint: {spec.compare[0]} - {spec.compare[1]} on {spec.primary_benchmark} {spec.primary_metric}",
        f"  folder: {spec.study_dir(storage)}; report: {report_dir(spec, storage)}",
    ]
    return "\n".join(lines)


def report_dir(spec: StudySpec, storage: str | None = None) -> Path:
    return Path(spec.report).resolve() if spec.report else spec.study_dir(storage) / "report"


# ------------------------------------------------------------------------------------------ stage 0
def _check_inputs(spec: StudySpec) -> None:
    """What can fail on bad input fails now, before Ray: data sets and model specs (a hub id offline and
    not cached is refused here; the embedded default is converted once)."""
    from verl_bench import data as data_lib
    from verl_bench.errors import UserError
    from verl_bench.models import resolve_model

    names = {t.config["data"]["train"] for t in spec.trials} | {t.config["data"]["eval"] for t in spec.trials}
    for name in sorted(names | set(spec.benchmarks)):
        data_lib.load_problems(name, data_root=spec.base["data"]["data_root"], limit=1)
    for m in spec.models:
        try:
            resolve_model(m.spec)
        except (UserError, OSError) as e:
            raise ConfigError(f"{spec.where(f'models.{m.key}.model')}: {e}") from None


def _prepare(spec: StudySpec, study_dir: Path, study_file: Path, resume: bool) -> None:
    """The study folder: a copy of the study file and every trial's config. A folder that holds another
    study (other trial configs) is refused; an existing one needs ``resume``."""
    resolved = json.loads(json.dumps({t.key: t.config for t in spec.trials}))  # as stored (tuples -> lists)
    stored = study_dir / RESOLVED_FILE
    if stored.is_file():
        if not resume:
            raise StudyError(f"{study_dir} already holds this study: rerun with --resume to continue it (finished "
                             "trials and benchmarks are kept), or give another name/--storage")
        old = json.loads(stored.read_text())["trials"]
        changed = sorted(k for k in set(old) | set(resolved)
                         if k not in old or k not in resolved or config_changes(old[k], resolved[k]))
        if changed:
            raise StudyError(f"{spec.source}: the trials differ from those of the study in {study_dir} "
                             f"({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}): a changed study "
                             "needs a new name (or remove the folder)")
    study_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(study_file, study_dir / "study.yaml")
    _write_json(stored, {"source": str(study_file), "trials": resolved,
                         "evaluation": {"benchmarks": spec.benchmarks, "preset": spec.preset.name,
                                        "protocol": spec.preset.key(), "checkpoint": spec.checkpoint},
                         "primary": {"benchmark": spec.primary_benchmark, "metric": spec.primary_metric,
                                     "compare": list(spec.compare)}})


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    tmp.replace(path)  # a kill never leaves half a file


# ------------------------------------------------------------------------------------------ stage 1
def _sweep_spec(spec: StudySpec):
    """The sweep machinery's view of the study's grid: resources, concurrency, failures, the shown metric."""
    from verl_bench.sweep.spec import SweepSpec

    first = spec.trials[0].config
    metric = "val/accuracy" if first["data"]["eval_size"] > 0 else "reward/mean"
    return SweepSpec(source=spec.source, base=first, space=[], algo="grid", scheduler="none", metric=metric,
                     mode="max", cpu=spec.cpu, gpu=spec.gpu, max_concurrent=spec.max_concurrent,
                     max_failures=spec.max_failures, name=TRAIN_DIR, lines=spec.lines)


def _known_trials(study_dir: Path) -> dict[str, dict]:
    path = study_dir / TRIALS_FILE
    if not path.is_file():
        return {}
    return {cell_key(e["model"], e["arm"], e["seed"]): e for e in json.loads(path.read_text())
            if e["arm"] != BASE_ARM}


def train_stage(spec: StudySpec, study_dir: Path, *, resume: bool, address: str | None, log=print) -> dict[str, dict]:
    """Train every trial that is not complete; returns cell key -> {trial, trial_dir, run_dir, error}."""
    from verl_bench.sweep.run import cell_home, finished_run, run_cells

    known = _known_trials(study_dir)
    if known and all(k in known and finished_run(study_dir / known[k]["run_dir"], spec.steps) for k in
                     (t.key for t in spec.trials)):
        log(f"[study] stage 1/3: all {len(spec.trials)} trials already trained, kept")
        return {k: {**known[k], "error": None} for k in (t.key for t in spec.trials)}
    done = sum(k in known and finished_run(study_dir / known[k]["run_dir"], spec.steps) for k in known)
    log(f"[study] stage 1/3: training {len(spec.trials)} trials ({len(spec.models)} model(s) x {len(spec.arms)} "
        f"arm(s) x {len(spec.seeds)} seed(s), {spec.steps} steps each{f', {done} already done' if done else ''}) "
        f"in {study_dir / TRAIN_DIR}")
    cells = {t.key: t.config for t in spec.trials}
    grid = {"model": [m.key for m in spec.models], "arm": list(spec.arms), "seed": list(spec.seeds)}
    for attempt in range(1, OOM_RESTARTS + 2):
        try:
            results = run_cells(_sweep_spec(spec), cells, grid, study_dir / TRAIN_DIR, resume=resume or attempt > 1,
                                address=address)
            break
        except RuntimeError as e:
            # Ray's memory monitor kills a trial's process when the node runs low (other programs count too);
            # Tune 2.60 then fails the whole experiment instead of the trial: restore it, finished trials kept
            if "running low on memory" not in str(e) or attempt > OOM_RESTARTS:
                raise
            log(f"[study] Ray killed a trial process for lack of memory; restoring the experiment "
                f"(attempt {attempt + 1}/{OOM_RESTARTS + 1})")
    out = {}
    for r in results:
        cfg = r.config
        key = cell_key(cfg["model"], cfg["arm"], cfg["seed"])
        dims = {"model": cfg["model"], "arm": cfg["arm"], "seed": cfg["seed"]}
        trial_dir = cell_home(study_dir / TRAIN_DIR, dims, spec.steps) or Path(r.path)  # see cell_home
        trial_id = (r.metrics or {}).get("trial_id") or _trial_id(trial_dir)
        out[key] = {"trial": trial_id, "trial_dir": _rel(trial_dir, study_dir),
                    "run_dir": _rel(trial_dir / "run", study_dir),
                    "error": None if r.error is None else f"{type(r.error).__name__}: {r.error}"}
    for key in cells:
        out.setdefault(key, {"trial": "", "trial_dir": "", "run_dir": "", "error": "no Tune trial ran"})
    return out


def _trial_id(trial_dir: Path) -> str:
    """Tune's trial id from its folder name (``_trial_<id>_<index>_<params>_<date>``)."""
    parts = trial_dir.name.lstrip("_").split("_")
    return "_".join(parts[1:3]) if len(parts) > 2 and parts[0] == "trial" else trial_dir.name


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(Path(path).resolve())


# ------------------------------------------------------------------------------------------ stage 2
def _entries(spec: StudySpec, study_dir: Path, trained: dict[str, dict]) -> list[dict]:
    """One entry per model to evaluate (base models first, then each trial's chosen checkpoint): what
    trials.json records and the per-sample table reads."""
    from verl_bench.evaluate.run import find_checkpoints

    protocol = spec.preset.key()
    entries = []
    if spec.evaluate_base:
        for m in spec.models:
            entries.append({"model": m.key, "arm": BASE_ARM, "seed": 0, "trial": "", "step": 0,
                            "spec": m.spec, "template": m.template, "checkpoint": m.spec, "run_dir": "",
                            "eval_dir": f"{BASE_DIR}/{m.key}/{m.template}/{protocol}", "error": None})
    for t in spec.trials:
        info = trained[t.key]
        entry = {"model": t.model, "arm": t.arm, "seed": t.seed, "trial": info["trial"], "step": None,
                 "spec": spec.model(t.model).spec, "template": spec.model(t.model).template, "checkpoint": "",
                 "trial_dir": info.get("trial_dir", ""), "run_dir": info["run_dir"], "eval_dir": "",
                 "error": info["error"]}
        if info["error"] is None:
            try:
                ckpt = find_checkpoints(study_dir / info["run_dir"], spec.checkpoint, spec.select_metric)[-1]
                folder = Path(ckpt["checkpoint"])
                entry.update(step=ckpt["step"], checkpoint=_rel(folder, study_dir),
                             eval_dir=_rel(folder / "eval" / entry["template"] / protocol, study_dir))
            except FileNotFoundError as e:
                entry["error"] = str(e)
        entries.append(entry)
    return entries


def evaluate_stage(spec: StudySpec, study_dir: Path, entries: list[dict], *, address: str | None,
                   log=print) -> list[str]:
    """Evaluate every entry that still lacks a benchmark, as Ray tasks; returns the errors."""
    from verl_bench.evaluate.run import EvalJob, evaluate_jobs, results_file

    ready = [e for e in entries if e["error"] is None]
    todo = [e for e in ready
            if any(results_file(study_dir / e["eval_dir"], b) is None for b in spec.benchmarks)]
    p = spec.preset
    if not todo:
        log(f"[study] stage 2/3: all {len(ready)} model(s) already evaluated on {len(spec.benchmarks)} "
            "benchmark(s), kept")
        return []
    log(f"[study] stage 2/3: evaluating {len(todo)} checkpoint(s) ({len(ready) - len(todo)} already done) on "
        f"{', '.join(spec.benchmarks)}, {p.n} sample(s) per problem ({p.key()})")
    jobs = []
    for e in todo:
        model = e["spec"] if e["arm"] == BASE_ARM else str(study_dir / e["checkpoint"])
        jobs.append(EvalJob(model=model, out_dir=study_dir / e["eval_dir"], template=e["template"],
                            labels={k: e[k] for k in ("model", "arm", "seed", "trial", "step")}))
    from verl_bench.rollout_vllm import VLLMOptions

    _, errors = evaluate_jobs(jobs, spec.benchmarks, p, address=address, cpus_per_job=spec.eval_cpu,
                              gpus_per_job=spec.eval_gpu, batch_size=spec.eval_batch_size, backend=spec.eval_backend,
                              data_root=spec.base["data"]["data_root"], log=log, use_ray=True,
                              vllm=VLLMOptions(**spec.eval_vllm))
    return errors


# ------------------------------------------------------------------------------------------ stage 3
def report_stage(spec: StudySpec, study_dir: Path, out_dir: Path, log=print) -> tuple[Path | None, list[str]]:
    """The per-sample table (samples.parquet), the report, and one verdict line per model on the primary
    endpoint. The report and statistics modules are optional here (they may be absent in a partial tree)."""
    from verl_bench.analysis.frame import samples_frame

    frame = samples_frame(study_dir, rebuild=True)
    log(f"[study] stage 3/3: {len(frame)} graded samples in {study_dir / SAMPLES_FILE}; writing the report")
    verdicts, comparisons = _verdicts(spec, frame)
    _write_json(study_dir / SUMMARY_FILE, {"primary": {"benchmark": spec.primary_benchmark,
                                                       "metric": spec.primary_metric,
                                                       "compare": list(spec.compare)},
                                           "comparisons": comparisons, "verdicts": verdicts})
    report = None
    try:
        from verl_bench.report import build_report
    except ImportError:
        log("[study] verl_bench.report is not available: no HTML report (the tables are in the study folder)")
    else:
        report = build_report([study_dir], out_dir, title=f"study {spec.name}")
    return report, verdicts


def _verdicts(spec: StudySpec, frame) -> tuple[list[str], list[dict]]:
    try:
        from verl_bench.analysis import stats
    except ImportError:
        return [], []
    a, b = spec.compare
    lines, rows = [], []
    for m in spec.models:
        try:
            c = stats.paired_difference(frame, m.key, spec.primary_benchmark, a, b)
        except Exception as e:  # noqa: BLE001 - e.g. an arm without evaluated samples: say so, go on
            lines.append(f"{m.key}: {a} - {b} on {spec.primary_benchmark}: no comparison ({type(e).__name__}: {e})")
            continue
        v = stats.verdict(c)
        n_problems = c.n_problems
        lines.append(f"{m.key}: {a} - {b} on {spec.primary_benchmark} {spec.primary_metric} = {c.delta:+.3f} "
                     f"(95% CI {c.ci_low:+.3f}..{c.ci_high:+.3f}, p={c.p_value:.2g}, MDE {c.mde:.3f}, "
                     f"{min(c.n_seeds_a, c.n_seeds_b)} seed(s) x {n_problems} problems x {c.n_samples} "
                     f"sample(s)): {v}")
        rows.append({"model": m.key, "arm_a": a, "arm_b": b, "benchmark": spec.primary_benchmark,
                     "delta": c.delta, "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value,
                     "mde": c.mde, "n_seeds_a": c.n_seeds_a, "n_seeds_b": c.n_seeds_b, "n_problems": n_problems,
                     "n_samples": c.n_samples, "method": c.method, "verdict": v})
    return lines, rows


# ------------------------------------------------------------------------------------------ the study
def run_study(path: str | Path, *, resume: bool = False, storage: str | None = None, address: str | None = None,
              log=print) -> StudyResult:
    """Validate the study file, then train, evaluate and report; each stage skips what is already done.

    ``resume``: continue the study already in its folder (without it an existing folder is refused).
    ``address``: an existing Ray cluster (default: a local one, started once for both Ray stages).
    """
    path = Path(path)
    spec = load_study(path)
    study_dir = spec.study_dir(storage)
    result = StudyResult(study_dir=study_dir)
    t0 = time.time()
    _check_inputs(spec)
    from verl_bench.sysutil import require_writable

    require_writable(study_dir, "--storage" if storage else spec.where("storage"))
    if address is None:
        from verl_bench.sweep.spec import check_resources

        check_resources(_sweep_spec(spec))
    _prepare(spec, study_dir, path, resume)
    log(f"[study] {spec.name}: {len(spec.trials)} trials + {len(spec.models) if spec.evaluate_base else 0} base "
        f"model(s) -> {study_dir}")
    result.timings["check_s"] = round(time.time() - t0, 1)

    t = time.time()
    trained = train_stage(spec, study_dir, resume=resume, address=address, log=log)
    result.errors += [f"{k}: {v['error']}" for k, v in trained.items() if v["error"]]
    entries = _entries(spec, study_dir, trained)
    _write_json(study_dir / TRIALS_FILE, entries)
    result.timings["train_s"] = round(time.time() - t, 1)

    t = time.time()
    result.errors += evaluate_stage(spec, study_dir, entries, address=address, log=log)
    result.timings["evaluate_s"] = round(time.time() - t, 1)

    t = time.time()
    result.report, result.verdicts = report_stage(spec, study_dir, report_dir(spec, storage), log=log)
    result.timings["report_s"] = round(time.time() - t, 1)
    result.timings["total_s"] = round(time.time() - t0, 1)
    with open(study_dir / "timings.jsonl", "a") as f:  # one line per invocation (a resumed run adds one)
        f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resume": resume, **result.timings})
                + "\n")
    return result
