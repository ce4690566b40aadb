"""``verl-bench report SOURCE... -o DIR``."""

from __future__ import annotations

from pathlib import Path


def _cmd_report(args) -> int:
    from verl_bench.report.build import build_report
    from verl_bench.sysutil import require_writable

    require_writable(args.output, "-o/--output")  # before the sources are read and the figures drawn
    metrics = [m.strip() for m in args.metric.split(",")] if args.metric else None
    modes = [m.strip() for m in args.mode.split(",")] if args.mode else None
    path = build_report([Path(s) for s in args.sources], Path(args.output), title=args.title, metrics=metrics,
                        modes=modes, n_boot=args.n_boot)
    print(f"report: open {path}")
    return 0


def add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="a static HTML report (figures as PNG/SVG, tables as CSV/parquet) on "
                                      "studies and sweeps")
    p.add_argument("sources", nargs="+", metavar="EXPERIMENT_OR_STUDY",
                   help="study folders and/or Tune sweep folders")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="report folder (index.html inside)")
    p.add_argument("--title", default=None)
    p.add_argument("--metric", default=None,
                   help="a sweep's metric(s), comma-separated (default: what the trial table records, else "
                        "val/accuracy)")
    p.add_argument("--mode", default=None, help="max or min per metric, comma-separated (default max)")
    p.add_argument("--n-boot", type=int, default=200, metavar="N",
                   help="bootstrap resamples of each swept knob's importance interval (default 200)")
    p.set_defaults(fn=_cmd_report)
