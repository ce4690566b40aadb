"""The page: one Jinja2 template (CSS included inline), autoescaped; nothing on it is fetched from anywhere."""

from __future__ import annotations

import jinja2

_ENV = jinja2.Environment(loader=jinja2.PackageLoader("verl_bench.report", "templates"),
                          autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                          trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def render_page(ctx: dict) -> str:
    return _ENV.get_template("report.html.j2").render(**ctx)
