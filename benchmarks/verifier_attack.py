"""The grader under attack: worst wall time per hostile answer and per batch, old grader against new.

    python benchmarks/verifier_attack.py                      # timeout_s=2, 2 workers, old = pre-split grader
    python benchmarks/verifier_attack.py --no-old             # the current grader only

Measures, with ``timeout_s`` per answer and a pool of ``--workers`` workers:
  * per answer: hanging answers (power towers) graded one call each, each from a warm pool -- the bound
    is ``timeout_s + 0.3 s``, the kill of the stuck worker and its warm replacement included -- and
    ``--back-to-back`` of them one after another (same bound: the replacements are forked by the zygote
    in milliseconds, so the warm ones are not used up);
  * per batch: 40 hostile completions in one ``grade_batch`` -- the bound is ``2 x timeout_s + 1 s`` on 2 cores;
  * the whole hostile suite of ``verl_bench.hostile``, each case alone from a warm pool (current grader
    only: the old one's extraction backtracks for hours on some million-character responses).
The old grader is ``verl_bench/reward.py`` of ``--old-rev`` (the monolith before issues 11/13), loaded from
git into a temporary module. Prints everything, checks the bounds with ``--slack`` seconds of slack (exit 1
when beyond), and appends one JSON line to benchmarks/results/verifier_attack.jsonl.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "verifier_attack.jsonl"
OLD_REV = "4ddfdff"  # the last commit with the single-file grader
TOWERS = ["9^{9^{9^{9}}}", "2^{2^{2^{2^{2^{2}}}}}", "10^{10^{10^{10}}}", "(9^9)^{9^{9^9}}", "e^{e^{e^{e^{e}}}}",
          "\\left(10^{100}\\right)^{10^{100}}"]


def load_old_grader(rev: str, workdir: str):
    """reward.py at ``rev`` as a module of its own, its workers importing that same file."""
    src = subprocess.run(["git", "show", f"{rev}:verl_bench/reward.py"], cwd=REPO, check=True, capture_output=True,
                         text=True).stdout
    src = src.replace('"from verl_bench.reward import _worker_main; _worker_main()"',
                      repr(f"import sys; sys.path.insert(0, {workdir!r}); from old_reward import _worker_main; "
                           "_worker_main()"))
    path = Path(workdir) / "old_reward.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_reward", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["old_reward"] = mod
    spec.loader.exec_module(mod)
    return mod


def singles(grader, timeout_s: float, repeats: int, pool, warm: bool) -> dict:
    """Hanging answers one call each: each from a warm pool (``warm``: the wait for it is not counted), or
    back to back (whatever replacing the killed workers costs the next call is counted)."""
    walls = []
    for k in range(repeats):
        if warm:
            pool.warmup()
        tower = TOWERS[k % len(TOWERS)]
        t0 = time.monotonic()
        (g,) = grader([f"\\boxed{{{tower}}}"], [f"{k}{warm}"], timeout_s)  # distinct golds: no cache hits
        walls.append(time.monotonic() - t0)
        assert not g.correct
    return {"n": repeats, "worst_s": max(walls), "mean_s": sum(walls) / len(walls)}


def batch40(grader, timeout_s: float, marker: str, pool) -> dict:
    from verl_bench.hostile import hostile_cases, one_batch

    pool.warmup()
    hostile = [c for c in hostile_cases(marker) if not c[3] and not c[0].startswith(("million", "long"))]
    return one_batch(grader, hostile[:40], timeout_s)


def run_grader(name: str, grade_batch, pool, timeout_s: float, repeats: int, marker: str,
               back_to_back: int) -> dict:
    grader = partial(grade_batch, pool=pool)
    pool.warmup()
    row = {"single": singles(grader, timeout_s, repeats, pool, warm=True)}
    pool.warmup()
    row["back_to_back"] = singles(grader, timeout_s, back_to_back, pool, warm=False)
    row["batch"] = batch40(grader, timeout_s, marker, pool)
    row["batch"].pop("wrong")
    print(f"[{name}] single hanging answer: worst {row['single']['worst_s']:.2f} s, mean "
          f"{row['single']['mean_s']:.2f} s over {repeats} ({back_to_back} back to back: worst "
          f"{row['back_to_back']['worst_s']:.2f} s, "
          f"mean {row['back_to_back']['mean_s']:.2f} s); 40 hostile completions in one batch: "
          f"{row['batch']['wall_s']:.2f} s ({row['batch']['timed_out']} timed out)", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--timeout", type=float, default=2.0, help="per-answer deadline, seconds")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=6, help="single hanging answers, each from a warm pool")
    ap.add_argument("--back-to-back", type=int, default=10, help="hanging answers one after another")
    ap.add_argument("--old-rev", default=OLD_REV)
    ap.add_argument("--no-old", action="store_true", help="skip the old grader")
    ap.add_argument("--slack", type=float, default=1.0, help="seconds over a bound still counted as within")
    ap.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from verl_bench.hostile import hostile_cases, per_answer
    from verl_bench.reward import grade_batch
    from verl_bench.verifier import VerifierPool

    t_s = args.timeout
    marker = os.path.join(tempfile.mkdtemp(), "pwned")
    row = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "host": platform.node(),
           "cpus": os.cpu_count(), "load_avg": os.getloadavg()[0], "timeout_s": t_s, "workers": args.workers,
           "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True, check=False).stdout.strip()}
    with VerifierPool(n_workers=args.workers, spares=1) as pool:
        row["new"] = run_grader("new", grade_batch, pool, t_s, args.repeats, marker, args.back_to_back)
        suite = per_answer(partial(grade_batch, pool=pool), hostile_cases(marker), t_s, before=pool.warmup)
    print(f"[new] hostile suite, each case alone: {suite['cases']} cases, worst {suite['worst_s']:.2f} s "
          f"({suite['worst_kind']}), {len(suite['wrong'])} graded unexpectedly", flush=True)
    row["new"]["suite"] = {k: suite[k] for k in ("cases", "worst_s", "worst_kind")} | {"wrong": len(suite["wrong"])}
    if not args.no_old:
        with tempfile.TemporaryDirectory() as d:
            old = load_old_grader(args.old_rev, d)
            pool = old.VerifierPool(n_workers=args.workers)
            try:
                row["old"] = run_grader(f"old {args.old_rev}", old.grade_batch, pool, t_s, args.repeats, marker,
                                        args.back_to_back)
            finally:
                pool.close()
        row["ratio_single_worst"] = row["old"]["single"]["worst_s"] / row["new"]["single"]["worst_s"]
        row["ratio_back_to_back_worst"] = row["old"]["back_to_back"]["worst_s"] / row["new"]["back_to_back"]["worst_s"]
        row["ratio_batch"] = row["old"]["batch"]["wall_s"] / row["new"]["batch"]["wall_s"]
        print(f"old / new: single worst x{row['ratio_single_worst']:.1f}, back to back worst "
              f"x{row['ratio_back_to_back_worst']:.1f}, batch x{row['ratio_batch']:.1f}")
    bounds = {"single": t_s + 0.3, "back_to_back": t_s + 0.3, "batch": 2 * t_s + 1.0}
    row["bounds_s"] = bounds
    row["within"] = {"single": row["new"]["single"]["worst_s"] <= bounds["single"] + args.slack,
                     "back_to_back": row["new"]["back_to_back"]["worst_s"] <= bounds["back_to_back"] + args.slack,
                     "batch": row["new"]["batch"]["wall_s"] <= bounds["batch"] + args.slack,
                     "nothing_executed": not os.path.exists(marker), "suite_as_expected": not suite["wrong"]}
    print(f"bounds (+{args.slack:g} s slack; load average {row['load_avg']:.1f} on {row['cpus']} CPUs): "
          + ", ".join(f"{k} {'ok' if v else 'EXCEEDED'}" for k, v in row["within"].items()))
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"appended to {args.results}")
    return 0 if all(row["within"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
