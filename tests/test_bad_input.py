"""Bad input is refused before anything starts (issue 13.5): one table of bad training configs, sweep files,
study files, data files, model specs and CLI flags. Each case runs the CLI in this process and must exit with
code 2 and one ``error:`` line that names the file:line, key or flag at fault, with no traceback, no Ray
started and no model built or loaded."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY_BASE
from verl_bench.cli import main
from verl_bench.config import _merge

CPUS, GPUS = os.cpu_count() or 1, torch.cuda.device_count()
NOWHERE = "/nonexistent/verl-bench"  # a path that does not exist
LONGEST_LINE = 600  # an error line lists the valid keys or names at most; longer is not "short"

TRAIN = {k: v for k, v in TINY_BASE.items() if k != "threads"}  # nothing may set this process's torch threads
SWEEP = {"base": TINY_BASE, "space": {"shaping.kappa": {"loguniform": [0.5, 8.0]}},
         "search": {"algo": "random", "seed": 0}, "scheduler": {"kind": "none"}, "metric": "rank/er",
         "mode": "max", "num_samples": 1, "resources": {"cpu": 1}, "name": "bad"}
EVALUATION = {"benchmarks": ["arithmetic_test_l0"], "preset": "paper", "n": 2, "max_tokens": 8, "limit": 5,
              "backend": "sampler"}
STUDY = {"name": "bad", "base": {**TRAIN, "data": {"train": "arithmetic_l0", "eval": "arithmetic_test_l0"}},
         "models": {"tiny": {"model": "tiny:test", "template": "chat-direct"}},
         "arms": {"grpo": {"shaping.enabled": False}, "verl": {}}, "seeds": [0], "evaluation": EVALUATION,
         "primary": {"benchmark": "arithmetic_test_l0", "metric": "accuracy", "compare": ["verl", "grpo"]}}
DROP = object()  # a study key left out


class Files:
    """One case's input files, in a folder of its own. Override values may be functions of this object."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True)

    def _values(self, over: dict) -> dict:
        return {k: v(self) if callable(v) else v for k, v in over.items()}

    def text(self, name: str, text: str) -> str:
        (self.root / name).write_text(text)
        return str(self.root / name)

    def yaml(self, name: str, doc: dict) -> str:
        return self.text(name, yaml.safe_dump({k: v for k, v in doc.items() if v is not DROP}, sort_keys=False))

    def config(self, **over) -> str:
        return self.yaml("run.yaml", _merge({**TRAIN, "run_dir": str(self.root / "run")}, self._values(over)))

    def sweep(self, **over) -> str:
        return self.yaml("sweep.yaml", {**SWEEP, "storage": str(self.root / "store"), **self._values(over)})

    def study(self, **over) -> str:
        return self.yaml("study.yaml", {**STUDY, "storage": str(self.root / "store"), **self._values(over)})

    def file(self) -> str:
        """A plain file: no folder can be made under it."""
        return self.text("a_file", "not a folder\n")

    def folder(self, name: str = "folder") -> str:
        (self.root / name).mkdir(exist_ok=True)
        return str(self.root / name)

    def data(self, train_jsonl: str) -> str:
        """A data root whose gsm8k_train file holds ``train_jsonl``."""
        (self.root / "data" / "gsm8k_train").mkdir(parents=True)
        (self.root / "data" / "gsm8k_train" / "train.jsonl").write_text(train_jsonl)
        return str(self.root / "data")


@dataclass
class Bad:
    what: str
    argv: Callable[[Files], list[str]]
    says: str  # a regex the error line must match: the file:line, key or flag at fault


def train(*sets: str, on_ray: bool = False, **over) -> Callable[[Files], list[str]]:
    return lambda f: ["train", f.config(**over), *(["--ray"] if on_ray else []), *[a for s in sets for a in ("--set", s)]]


def data_file(text: str, on_ray: bool = False) -> Callable[[Files], list[str]]:
    return train(on_ray=on_ray, data=lambda f: {"train": "gsm8k_train", "data_root": f.data(text)})


def sweep(**over) -> Callable[[Files], list[str]]:
    return lambda f: ["sweep", f.sweep(**over)]


def study(**over) -> Callable[[Files], list[str]]:
    return lambda f: ["study", f.study(**over)]


def evaluate(*flags: str) -> Callable[[Files], list[str]]:
    return lambda f: ["eval", *flags]


def kappa_space(dist: dict) -> Callable[[Files], list[str]]:
    return sweep(space={"shaping.kappa": dist})


CASES = [
    # ---- training configs: unknown keys, wrong types, impossible values
    Bad("an unknown key", train(stepz=3), r"run\.yaml:\d+: stepz: unknown key \(did you mean 'steps'\?\)"),
    Bad("an unknown nested key", train("rollout.temprature=0.7"), r"--set rollout\.temprature: unknown key"),
    Bad("a word for an integer", train("steps=ten"), r"--set steps: expected an integer, got 'ten'"),
    Bad("a word for a number", train(rollout={"temperature": "hot"}),
        r"run\.yaml:\d+: rollout\.temperature: expected a number"),
    Bad("true for an integer", train("rollout.n=true"), r"--set rollout\.n: expected an integer, got True"),
    Bad("a number for a section", train(rollout=5), r"run\.yaml:\d+: rollout: expected a mapping"),
    Bad("a value outside a choice", train("rollout.engine=fast"), r"--set rollout\.engine: must be one of"),
    Bad("kappa = 0", train("shaping.kappa=0"), r"--set shaping\.kappa: .*kappa must be > 0"),
    Bad("kappa < 0 in the file", train(shaping={"kappa": -2.0}), r"run\.yaml:\d+: shaping\.kappa: .*must be > 0"),
    Bad("stride = 0", train("rank.stride=0"), r"--set rank\.stride: must be >= 1"),
    Bad("stride < 0 in the file", train(rank={"stride": -3}), r"run\.yaml:\d+: rank\.stride: must be >= 1"),
    Bad("window < stride", train("rank.window=2"), r"--set rank\.window: must be >= 2 x rank\.stride"),
    Bad("temperature < 0", train("rollout.temperature=-0.5"), r"--set rollout\.temperature: must be > 0"),
    Bad("top_p = 0", train("rollout.top_p=0"), r"--set rollout\.top_p: must be in \(0, 1\]"),
    Bad("top_p > 1", train(rollout={"top_p": 1.5}), r"run\.yaml:\d+: rollout\.top_p: must be in \(0, 1\]"),
    Bad("prompts not a multiple of the workers", train("ray.num_workers=2", "rollout.prompts_per_step=3"),
        r"--set rollout\.prompts_per_step: must be a multiple of ray\.num_workers \(2\)"),
    Bad("more mini-batches than responses", train("algo.mini_batches=9"),
        r"--set algo\.mini_batches: must not exceed"),
    Bad("an unknown estimator", train("algo.estimator=ppo"), r"--set algo\.estimator: unknown estimator 'ppo'"),
    Bad("an unknown template", train(data={"template": "alpaca"}),
        r"run\.yaml:\d+: data\.template: unknown prompt template"),
    Bad("an unknown dataset", train("data.train=arithmetic_l9"),
        r"--set data\.train: unknown dataset 'arithmetic_l9'"),
    Bad("zero steps", train(steps=0), r"run\.yaml:\d+: steps: must be >= 1"),
    Bad("no Ray workers", train("ray.num_workers=0"), r"--set ray\.num_workers: must be >= 1"),
    Bad("--set without '='", lambda f: ["train", f.config(), "--set", "steps"], r"--set 'steps': expected key=value"),
    Bad("--set into a value", train("steps.max=3"), r"--set steps\.max: 'steps' is not a section"),
    Bad("a missing config file", lambda f: ["train", f"{f.root}/none.yaml"], r"none\.yaml: config file not found"),
    Bad("a config that is not YAML", lambda f: ["train", f.text("run.yaml", "steps: [1, 2\n")],
        r"run\.yaml:2: not valid YAML: expected ',' or '\]'"),
    Bad("a config that is a list", lambda f: ["train", f.text("run.yaml", "- steps\n")],
        r"run\.yaml: the top level must be a mapping"),
    # ---- model specs
    Bad("a missing model folder", train(f"model={NOWHERE}/model"),
        rf"run\.yaml: model: Model path '{NOWHERE}/model' does not exist"),
    Bad("a folder that holds no model", train(model=lambda f: f.folder("no_model")),
        r"run\.yaml: model: .*no config\.json"),
    Bad("an unknown tiny-model option", train("model=tiny:x?depth=3"), r"run\.yaml: model: unknown option 'depth'"),
    Bad("a tiny model that cannot be built", train("model=tiny:x?hidden_size=30"),
        r"run\.yaml: model: spec .*hidden_size must divide by heads"),
    Bad("a hub id offline and not cached", train("model=verl-bench-test/no-such-model"),
        r"run\.yaml: model: Model 'verl-bench-test/no-such-model' is not a local folder .*offline"),
    # ---- storage that cannot be written
    Bad("a run folder under a file", train(run_dir=lambda f: f.file() + "/run"),
        r"run\.yaml: run_dir: cannot write in .*is a file"),
    Bad("a run folder in /proc", train("run_dir=/proc/verl-bench-run"),
        r"run\.yaml: run_dir: cannot write in '/proc/verl-bench-run'"),
    Bad("Ray storage under a file", lambda f: ["train", f.config(), "--ray", "--storage", f.file() + "/ray"],
        r"--storage: cannot write in"),
    # ---- data files
    Bad("an empty data file", data_file(""), r"gsm8k_train/train\.jsonl: no records"),
    Bad("a malformed data line", data_file('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?",\n'),
        r"gsm8k_train/train\.jsonl:2: malformed JSON line"),
    Bad("a data line that is no object", data_file("[1, 2]\n"), r"train\.jsonl:1: expected a JSON object"),
    Bad("a record without its answer", data_file('{"question": "1+1?"}\n'), r"train\.jsonl:1: missing key 'answer'"),
    Bad("an empty question", data_file('{"question": "", "answer": "#### 2"}\n'),
        r"train\.jsonl:1: key 'question' is not a non-empty string"),
    Bad("a malformed data line under --ray", data_file('{"question": "1+1?",\n', on_ray=True),
        r"train\.jsonl:1: malformed JSON line"),
    Bad("a missing data root", train("data.train=gsm8k_train", f"data.data_root={NOWHERE}/data"),
        rf"data root '{NOWHERE}/data' is not an existing folder"),
    # ---- more than the machine has
    Bad("more CPUs than the machine (train --ray)", train(on_ray=True, ray={"cpus_per_worker": CPUS + 1}),
        rf"run\.yaml: ray\.num_workers: 1 workers need {CPUS + 1} CPU\(s\) but this machine has {CPUS}"),
    Bad("more GPUs than the machine (train --ray)",
        train(on_ray=True, ray={"num_workers": GPUS + 1, "use_gpu": True},
              rollout={"prompts_per_step": 2 * (GPUS + 1)}),
        rf"ray\.num_workers: {GPUS + 1} workers need {GPUS + 1} GPU\(s\) but this machine has {GPUS}"),
    # ---- sweep files
    Bad("a sweep's unknown key", sweep(sheduler={"kind": "asha"}),
        r"sweep\.yaml:\d+: sheduler: unknown key \(did you mean 'scheduler'\?\)"),
    Bad("an unknown key in a space", sweep(space={"shaping.kapa": {"uniform": [1, 4]}}),
        r"sweep\.yaml:\d+: space\.shaping\.kapa: not a TrainConfig key"),
    Bad("an unknown distribution", kappa_space({"gaussian": [0, 1]}),
        r"sweep\.yaml:\d+: space\.shaping\.kappa: expected one distribution"),
    Bad("a range with lo > hi", kappa_space({"uniform": [4, 1]}), r"space\.shaping\.kappa: uniform needs lo < hi"),
    Bad("a log range from 0", kappa_space({"loguniform": [0, 1]}), r"space\.shaping\.kappa: loguniform needs lo > 0"),
    Bad("a space reaching kappa <= 0", kappa_space({"uniform": [-1, 2]}), r"space\.shaping\.kappa: .*must be > 0"),
    Bad("a space reaching window < stride", sweep(space={"rank.window": {"choice": [2, 64]}}),
        r"space\.rank\.window: .*must be >= 2 x rank\.stride"),
    Bad("a float range for an integer", sweep(space={"rollout.n": {"uniform": [2, 8]}}),
        r"space\.rollout\.n: rollout\.n is an integer"),
    Bad("more GPUs per trial than the machine", sweep(resources={"cpu": 1, "gpu": GPUS + 1}),
        rf"sweep\.yaml:\d+: resources\.gpu: {GPUS + 1} GPU\(s\) per trial but this machine has {GPUS}"),
    Bad("more CPUs per trial than the machine", sweep(resources={"cpu": CPUS + 1}),
        rf"sweep\.yaml:\d+: resources\.cpu: {CPUS + 1} per trial but this machine has {CPUS} CPUs"),
    Bad("Train workers that cannot fit beside their trial",
        sweep(base={**TINY_BASE, "ray": {"num_workers": 2, "cpus_per_worker": CPUS}}),
        r"sweep\.yaml:\d+: resources\.cpu: 1 trial process\(es\) x 1 CPU \+ 2 Train workers"),
    Bad("no samples", sweep(num_samples=0), r"sweep\.yaml:\d+: num_samples: expected an integer >= 1, got 0"),
    Bad("an unknown metric", sweep(metric="reward_mean"),
        r"sweep\.yaml:\d+: metric: unknown metric 'reward_mean' \(did you mean 'reward/mean'\?\)"),
    Bad("a grace period past max_t", sweep(scheduler={"kind": "asha", "grace_period": 5, "max_t": 3}),
        r"sweep\.yaml:\d+: scheduler\.grace_period: must be <= max_t"),
    Bad("a missing base config", sweep(base="missing.yaml"),
        r"sweep\.yaml:\d+: base: config file 'missing\.yaml' not found"),
    Bad("kappa 0 in a sweep's base", sweep(base={**TINY_BASE, "shaping": {"kappa": 0}}),
        r"sweep\.yaml:\d+: shaping\.kappa: .*must be > 0"),
    Bad("a missing base model", sweep(base={**TINY_BASE, "model": f"{NOWHERE}/model"}),
        r"sweep\.yaml:\d+: base: model: Model path"),
    Bad("a missing sweep file", lambda f: ["sweep", f"{f.root}/none.yaml"], r"none\.yaml: sweep file not found"),
    Bad("sweep storage under a file", sweep(storage=lambda f: f.file() + "/store"),
        r"sweep\.yaml:\d+: storage: cannot write in"),
    Bad("--storage in /proc", lambda f: ["sweep", f.sweep(), "--storage", "/proc/verl-bench-sweeps"],
        r"--storage: cannot write in"),
    # ---- study files
    Bad("a study's unknown key", study(arm={"x": {}}), r"study\.yaml:\d+: arm: unknown key \(did you mean 'arms'\?\)"),
    Bad("a study without its endpoint", study(primary=DROP), r"study\.yaml: missing required key 'primary'"),
    Bad("an unknown benchmark", study(evaluation={**EVALUATION, "benchmarks": ["gsm9k"]}),
        r"study\.yaml:\d+: evaluation\.benchmarks: unknown benchmark 'gsm9k'"),
    Bad("seeds that are no list", study(seeds=3), r"study\.yaml:\d+: seeds: expected a list"),
    Bad("an arm that sets the model", study(arms={"grpo": {}, "verl": {"model": "tiny:other"}}),
        r"study\.yaml:\d+: arms\.verl\.model: model is set by the study"),
    Bad("an arm with kappa 0", study(arms={"grpo": {}, "verl": {"shaping.kappa": 0}}),
        r"study\.yaml:\d+: arms\.verl: .*kappa must be > 0"),
    Bad("a study's missing model", study(models={"tiny": {"model": f"{NOWHERE}/model"}}),
        r"study\.yaml:\d+: models\.tiny\.model: Model path"),
    Bad("a comparison with an unknown arm", study(primary={**STUDY["primary"], "compare": ["verl", "ppo"]}),
        r"study\.yaml:\d+: primary\.compare: unknown arm 'ppo'"),
    Bad("zero samples per problem", study(evaluation={**EVALUATION, "n": 0}),
        r"study\.yaml:\d+: evaluation\.n: expected an integer >= 1"),
    Bad("an evaluation temperature < 0", study(evaluation={**EVALUATION, "temperature": -0.5}),
        r"study\.yaml:\d+: evaluation: .*temperature must be >= 0"),
    Bad("an evaluation top_p > 1", study(evaluation={**EVALUATION, "top_p": 1.5}),
        r"study\.yaml:\d+: evaluation: .*top_p must be in \(0, 1\]"),
    Bad("study storage under a file", study(storage=lambda f: f.file() + "/store"),
        r"study\.yaml:\d+: storage: cannot write in"),
    # ---- CLI flags: eval, report, plan
    Bad("eval of nothing", evaluate(), r"give MODEL_OR_CHECKPOINT"),
    Bad("eval: an unknown benchmark", evaluate("tiny:test", "--benchmarks", "gsm9k"), r"--benchmarks: .*gsm9k"),
    Bad("eval: an unknown preset", evaluate("tiny:test", "--preset", "fast"), r"unknown eval preset 'fast'"),
    Bad("eval: --temperature < 0", evaluate("tiny:test", "--temperature", "-1"), r"temperature must be >= 0"),
    Bad("eval: --top-p > 1", evaluate("tiny:test", "--top-p", "1.5"), r"top_p must be in \(0, 1\]"),
    Bad("eval: --top-p 0", evaluate("tiny:test", "--top-p", "0"), r"top_p must be in \(0, 1\]"),
    Bad("eval: --n 0", evaluate("tiny:test", "--n", "0"), r"n must be >= 1"),
    Bad("eval: --n that is no number", evaluate("tiny:test", "--n", "abc"), r"argument --n: invalid int value: 'abc'"),
    Bad("eval: --k that is no list of numbers", evaluate("tiny:test", "--k", "1,x"),
        r"--k: expected a comma list of integers"),
    Bad("eval: a missing model", evaluate(f"{NOWHERE}/model"), rf"Model path '{NOWHERE}/model' does not exist"),
    Bad("eval: a bad tiny spec", evaluate("tiny:x?depth=3"), r"unknown option 'depth'"),
    Bad("eval: a missing experiment", evaluate("--experiment", f"{NOWHERE}/exp"),
        rf"--experiment {NOWHERE}/exp: no such folder"),
    Bad("eval: a missing data root", evaluate("tiny:test", "--data-root", f"{NOWHERE}/data"), r"--data-root: data root"),
    Bad("eval: --output under a file", lambda f: ["eval", "tiny:test", "--output", f.file() + "/out"],
        r"--output: cannot write in .*is a file"),
    Bad("report of a missing folder", lambda f: ["report", f"{NOWHERE}/study", "-o", f"{f.root}/r"],
        rf"{NOWHERE}/study: not a folder"),
    Bad("report of a folder that is no study", lambda f: ["report", f.folder(), "-o", f"{f.root}/r"],
        r"neither a study folder"),
    Bad("report -o under a file", lambda f: ["report", f.folder(), "-o", f.file() + "/r"],
        r"-o/--output: cannot write in"),
    Bad("report without -o", lambda f: ["report", f.folder()], r"the following arguments are required: -o/--output"),
    Bad("plan --gpus 0", lambda f: ["plan", f.config(), "--gpus", "0"], r"--gpus: must be positive"),
    Bad("plan --gpu-memory < 0", lambda f: ["plan", f.config(), "--gpu-memory", "-1"], r"--gpu-memory: must be positive"),
    Bad("plan of a bad config", lambda f: ["plan", f.config(stepz=1)], r"run\.yaml:\d+: stepz: unknown key"),
    Bad("plan --strategy unknown", lambda f: ["plan", f.config(), "--strategy", "zero3"],
        r"argument --strategy: invalid choice: 'zero3'"),
]


@pytest.fixture(scope="module")
def tiny_test_model():
    """tiny:test in the model cache, so the cases that name it build nothing."""
    from verl_bench.models import resolve_model

    resolve_model("tiny:test")


def _verdict(case: Bad, rc, out: str, err: str, ray_up: bool, models: dict) -> str | None:
    """What is wrong with how the CLI refused ``case``, or None."""
    lines = [line for line in err.splitlines() if "error:" in line]
    shown = [line for line in err.splitlines() if line.strip()]
    if rc != 2:
        return f"exit code {rc!r}, expected 2"
    if "Traceback" in out + err:
        return "printed a traceback"
    if len(lines) != 1 or (len(shown) != 1 and not err.startswith("usage:")):  # argparse: usage, then the error
        return f"{len(shown)} lines on stderr, expected one error line"
    if len(lines[0]) > LONGEST_LINE:
        return f"an error line of {len(lines[0])} characters"
    if not re.search(case.says, lines[0]):
        return f"the error line does not match {case.says!r}"
    if ray_up:
        return "Ray was started"
    if any(models.values()):
        return f"models were built or loaded: {dict(models)}"
    return None


def test_bad_input_is_refused_before_anything_starts(tmp_path, capsys, monkeypatch, tiny_test_model, model_builds):
    import ray

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    failures = []
    for i, case in enumerate(CASES):
        argv = case.argv(Files(tmp_path / f"case{i:03d}"))
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse refuses its own flags this way
            rc = e.code
        except Exception as e:  # noqa: BLE001 - an escaped exception is this test's failure, reported per case
            rc = f"{type(e).__name__}: {e}"
        out, err = capsys.readouterr()
        why = _verdict(case, rc, out, err, ray.is_initialized(), model_builds)
        if why:
            failures.append(f"{case.what}: {why}\n    argv: {argv}\n    stderr: {err.strip()[-600:]}")
        if ray.is_initialized():
            ray.shutdown()
    refused = len(CASES) - len(failures)
    print(f"{refused} bad inputs refused")
    assert not failures, f"{len(failures)} of {len(CASES)} bad inputs not refused as they should be:\n" + "\n".join(failures)
    assert refused >= 40
