"""``verl-bench report``: a self-contained static report on studies and sweeps.

    verl-bench report runs/studies/NAME [MORE...] -o DIR     # DIR/index.html, DIR/figures/*.{png,svg},
                                                            # DIR/tables/*.{csv,parquet}

Sources are study folders (study.yaml / trials.json: read through ``verl_bench.analysis.frame``) and Tune
sweep folders (experiment_state*.json: ``verl_bench.analysis.hpo.trial_table``). The page opens offline: its
CSS is inline and every chart is an inline SVG (a data URI); a Content-Security-Policy forbids any request.
Every number on it comes from ``verl_bench.analysis.stats`` / ``.hpo``; this package arranges and draws.
Sections: header (what was compared, protocol, data provenance, versions, commit, primary endpoint), verdict,
the paper-layout table, a forest plot of Δ, pass@k curves, training dynamics, the HPO section for sweeps, and
an appendix of problems where the arms disagree.
"""

from verl_bench.report.build import build_report, render_report
from verl_bench.report.cli import add_report_parser
from verl_bench.report.sources import ReportError

__all__ = ["ReportError", "add_report_parser", "build_report", "render_report"]
