"""``verl-bench study``: validate a study file, then train, evaluate and report (see the package doc)."""

from __future__ import annotations


def cmd_study(args) -> int:
    from verl_bench.study.run import describe, report_dir, run_study
    from verl_bench.study.spec import load_study

    spec = load_study(args.study)  # refused here, before Ray starts, with file:line: key
    if args.dry_run:
        print(f"{args.study}: ok\n{describe(spec, args.storage)}")
        return 0
    result = run_study(args.study, resume=args.resume, storage=args.storage, address=args.address)
    t = result.timings
    print(f"[study] done in {t.get('total_s', 0):.0f} s (train {t.get('train_s', 0):.0f} s, evaluate "
          f"{t.get('evaluate_s', 0):.0f} s, report {t.get('report_s', 0):.0f} s): {result.study_dir}")
    for line in result.verdicts:
        print(f"[study] verdict {line}")
    print(f"[study] report: {result.report or report_dir(spec, args.storage)}"
          + ("" if result.report else " (not written: see above)"))
    for e in result.errors:
        print(f"[study] error: {e}")
    return 1 if result.errors else 0


def add_study_parser(subparsers) -> None:
    s = subparsers.add_parser("study", help="models x arms x seeds: train, evaluate, report (a study YAML)",
                              description="Run a study file (see verl_bench/study/__init__.py for the format).")
    s.add_argument("study", help="study file, e.g. studies/demo.yaml")
    s.add_argument("--resume", action="store_true", help="continue the study in its folder (finished trials "
                                                         "and benchmarks are kept)")
    s.add_argument("--storage", default=None, help="parent folder of the study's folder (default: the file's "
                                                   "storage, or runs/studies)")
    s.add_argument("--address", default=None, help="an existing Ray cluster (default: start a local Ray)")
    s.add_argument("--dry-run", action="store_true", help="validate the file and print the plan")
    s.set_defaults(fn=cmd_study)
