"""The GPU path in one short run (issue 12.5): five parts, one JSON row each, for a lent H100/H200.

    python benchmarks/gpu_check.py [--budget-s 480] [--only precision,rank] [--cpu-smoke] [--results PATH]

  precision   one AdamW step at the paper's lr (5e-7) on a SmolLM2-135M-shaped model built from its config:
              fp32 master weights under bf16 autocast move as an fp32 step moves them; a pure-bf16 step does
              not move them, and verl_bench.precision refuses an optimizer over bf16 weights
  rank        ER/ERV/ERA at the paper's scale (192 responses x 1536 tokens x D 3584, bf16 states as the sampler
              records them) against tests/reference.py's float64 numpy SVD on a few responses, with
              tests/test_rank.py's tolerances, and the device time (target <= 1.0 s on an H100-class GPU)
  sampler     tokens/s of the cached sampler (verl_bench.rollout, engine "cached") vs model.generate at batch
              256 (32 prompts x 8 samples x 256 tokens), and both samplers' hidden states vs a scoring pass
  checkpoint  the plain loop (verl_bench.train.train, 2 steps at lr 5e-7): the master weights it holds when it
              saves reload with AutoModelForCausalLM.from_pretrained bit for bit, float32, moved from the start
  fsdp        the same loop with ray.strategy=fsdp in a torch.distributed group of one (nccl on CUDA, gloo on
              the CPU): sharded parameters, a checkpoint that reloads bit for bit, a first update like the
              plain loop's; skipped, with the reason, while the config has no ray.strategy

Each part is timed and isolated (an error is recorded and the next part runs); a part that would not end
within --budget-s is skipped with the reason. As each part ends its row is appended to --results
(benchmarks/results/gpu_check.jsonl) and to $OUT/gpu_check.jsonl when OUT is set; a last "summary" row says
which parts passed and whether Ray was imported (it must not be: the GPU machine has none). Exit status 0
when no part failed, 2 on bad arguments. ``--cpu-smoke`` runs every code path at tiny sizes on the CPU
(tests/test_gpu_check.py). Models are random, built from configs: no hub, no weights travel.

On the GPU machine (torch 2.11, transformers 5.17 preinstalled, no Ray) the SmolLM2 tokenizer (3.4 MB) travels
in .cache/gpu, made here once by `make gpu-check-cache`; the device tool's command (carry [".cache/gpu"]):
    PYTHONPATH=. HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false VERL_BENCH_CACHE=.cache/gpu
    PYTHONUNBUFFERED=1 timeout 540 python3 benchmarks/gpu_check.py
Only $OUT comes back from that machine: append its gpu_check.jsonl to benchmarks/results/gpu_check.jsonl here.
A failed part can be rerun alone with --only NAME.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # verl_bench, tests.reference and benchmarks.gpu_parts, run from anywhere
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from benchmarks.gpu_parts import GPU, PARTS, SMOKE, Context, Skipped

RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.jsonl"
Part = Callable[[Context], "tuple[bool, dict]"]


def run_parts(ctx, parts: dict[str, Part], budget_s: float, write: Callable[[dict], None],
              estimates: dict[str, float]) -> bool:
    """Run each part in order, timed and isolated; write one row per part. Returns whether none failed.

    A part is skipped (row ``skipped``: the reason) when the time already spent plus its estimate would pass
    ``budget_s``, or when it raises :class:`Skipped`. Any other exception fails that part only.
    """
    start, none_failed = time.perf_counter(), True
    for name, part in parts.items():
        row = {"part": name, "pass": None, "skipped": None, "seconds": 0.0, "figures": {}, "error": None}
        spent, need = time.perf_counter() - start, estimates.get(name, 0.0)
        if spent + need > budget_s:
            row["skipped"] = (f"time budget: {spent:.0f} s of --budget-s {budget_s:.0f} spent, this part needs "
                              f"about {need:.0f} s")
        else:
            t0 = time.perf_counter()
            try:
                ok, figures = part(ctx)
                row.update({"pass": bool(ok), "figures": figures})
            except Skipped as e:
                row["skipped"] = str(e)
            except Exception as e:  # noqa: BLE001 - one failing part must not hide the others' figures
                row.update({"pass": False, "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc(limit=-4)})
            row["seconds"] = round(time.perf_counter() - t0, 2)
            _free_memory()
        none_failed &= row["pass"] is not False
        write(row)
        verdict = "SKIP" if row["skipped"] else "PASS" if row["pass"] else "FAIL"
        detail = row["skipped"] or row["error"] or _short(row["figures"])
        print(f"{verdict} {name} ({row['seconds']:.1f} s): {detail}", flush=True)
    return none_failed


def _short(figures: dict) -> dict:
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in figures.items()}


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def environment(mode: str, device: torch.device) -> dict:
    """What every row says about where it ran."""
    import transformers

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None  # the device machine's copy of the tree may have no .git
    return {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "mode": mode,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "commit": commit}


def row_writer(paths: list[Path], common: dict) -> Callable[[dict], None]:
    """Append each row (with ``common`` first) to every path, flushed at once: a killed run keeps its rows."""
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)

    def write(row: dict) -> None:
        line = json.dumps({**common, **row}, default=str) + "\n"
        for p in paths:
            with open(p, "a") as f:
                f.write(line)

    return write


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu-smoke", action="store_true", help="every part at tiny sizes on the CPU (about a minute)")
    p.add_argument("--budget-s", type=float, default=480.0, help="skip the parts that would end after this")
    p.add_argument("--only", default=None, help=f"comma-separated parts to run (of {','.join(PARTS)})")
    p.add_argument("--results", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    names = list(PARTS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in PARTS]
    if unknown or not names:
        p.error(f"--only {args.only!r}: unknown part(s) {unknown}; the parts are {', '.join(PARTS)}")
    if not args.cpu_smoke and not torch.cuda.is_available():
        p.error("no CUDA device here: the full sizes are for a GPU; use --cpu-smoke for the tiny CPU run")
    device = torch.device("cpu") if args.cpu_smoke else torch.device("cuda", 0)
    sizes = SMOKE if args.cpu_smoke else GPU
    mode = "cpu-smoke" if args.cpu_smoke else "gpu"

    paths = [args.results] + ([Path(os.environ["OUT"]) / "gpu_check.jsonl"] if os.environ.get("OUT") else [])
    write = row_writer(paths, environment(mode, device))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        ctx = Context(device=device, sizes=sizes, tmp=Path(tmp))
        ok = run_parts(ctx, {n: PARTS[n] for n in names}, args.budget_s, write, sizes.estimate_s)
    write({"part": "summary", "pass": ok, "skipped": None, "seconds": round(time.perf_counter() - t0, 2),
           "error": None, "figures": {"parts": names, "budget_s": args.budget_s,
                                      "ray_imported": "ray" in sys.modules}})
    print(f"{'NO PART FAILED' if ok else 'SOME PARTS FAILED'} in {time.perf_counter() - t0:.0f} s; rows appended to "
          f"{', '.join(map(str, paths))}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
