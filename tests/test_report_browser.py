"""The generated report in a real browser: Debian's headless Chromium driven by the Python playwright package
(no browser download). The page must load with no console error, send no request to any network address and
show every chart; a screenshot is kept in the test's temporary folder."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.report_fakes import fake_dynamics, fake_meta, fake_samples, fake_sweep

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
# flags that keep Chromium from reaching for Google's services on a closed network (see STACK.md)
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _skip_reason() -> str | None:
    if CHROMIUM or os.geteuid() == 0:
        return None  # as root (CI) .ci/run installs chromium: its absence there is a failure, not a skip
    return "Debian's chromium is not installed and this is not root (`apt-get install -y chromium`; .ci/run does it)"


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")]


def test_report_renders_offline_in_chromium(tmp_path):
    from playwright import sync_api  # the dev extra; it drives Debian's chromium, never a downloaded one

    from verl_bench.analysis.hpo import trial_table
    from verl_bench.report import render_report

    trials = trial_table(fake_sweep(tmp_path / "sources"))
    page_path = render_report(fake_samples(models=("tiny-a",)), fake_dynamics(models=("tiny-a",)),
                              tmp_path / "report", fake_meta(models=("tiny-a",)), trials=trials, n_boot=10,
                              progress=lambda s: None)

    requests, console_errors, page_errors = [], [], []

    def route(r):
        if r.request.url.startswith(("file://", "data:")):
            r.continue_()
        else:  # record and refuse anything that would leave the machine
            requests.append(r.request.url)
            r.abort()

    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory(dir=tmp_path) as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM or "/usr/bin/chromium", headless=True, args=FLAGS,
                                                    viewport={"width": 1280, "height": 900})
        try:
            page = ctx.new_page()
            page.route("**/*", route)
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(page_path.as_uri(), wait_until="load")
            images = page.eval_on_selector_all(
                "img", "els => els.map(e => [e.alt, e.complete, e.naturalWidth, e.getBoundingClientRect().width])")
            svgs = page.eval_on_selector_all("svg", "els => els.map(e => e.getBoundingClientRect().width)")
            sections = page.eval_on_selector_all("section", "els => els.map(e => e.id)")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            ctx.close()

    assert requests == [], f"the page asked the network for {requests}"
    assert console_errors == [] and page_errors == [], (console_errors, page_errors)
    figure_files = sorted((tmp_path / "report" / "figures").glob("*.svg"))
    assert len(images) == len(figure_files) >= 7  # forest, pass@k, dynamics, importance, slices, contour, history
    for alt, complete, natural_width, shown_width in images:
        assert complete and natural_width > 0 and shown_width > 0, f"figure {alt!r} did not render"
    assert all(w > 0 for w in svgs)
    assert {"header", "verdict", "table", "forest", "passk", "dynamics", "hpo-0", "appendix"} <= set(sections)
    assert (tmp_path / "report.png").stat().st_size > 10_000
