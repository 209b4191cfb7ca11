"""The HTML of ``obsml report``: one self-contained file, plots as base64 PNG drawn by matplotlib (Agg).

Nothing in the page is fetched: no script, no font, no stylesheet from elsewhere; images are
``data:`` URIs. Every text from the store is escaped, and scrubbed of credentials as obsml's output is.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ._secrets import scrub

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;
padding:0 1rem}
h1{font-size:1.6rem}h2{border-bottom:2px solid #ddd;padding-bottom:.2rem;margin-top:2.2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left}th{background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.flag td{background:#fde8e8}.note{color:#555;font-style:italic}.missing{background:#fff7e0;
border-left:4px solid #f0b400;padding:.5rem 1rem}.grid{display:flex;flex-wrap:wrap;gap:.5rem}img{max-width:100%}
"""


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str]]) -> str:
    """The whole document: a title, a table of contents and the sections (title, HTML body)."""
    toc = "".join(f'<li><a href="#s{n}">{html.escape(name)}</a></li>' for n, (name, _) in enumerate(sections))
    body = "".join(f'<section id="s{n}"><h2>{html.escape(name)}</h2>{content}</section>'
                   for n, (name, content) in enumerate(sections))
    return (
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p><ul>{toc}</ul>{body}</body></html>\n"
    )


def missing(text: str) -> str:
    """A section's body when its data is not there: said plainly, never an empty section."""
    return f'<p class="missing">{html.escape(text)}</p>'


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def text(value: Any) -> str:
    return html.escape(scrub(str(value)))


def table(headings: Sequence[str], rows: Iterable[Sequence[Any]], flagged: Sequence[bool] | None = None) -> str:
    """An HTML table; numbers right-aligned and shortened, None as an empty cell."""
    flags = list(flagged or [])
    lines = []
    for n, row in enumerate(rows):
        cells = "".join(_cell(value) for value in row)
        lines.append(f'<tr class="flag">{cells}</tr>' if n < len(flags) and flags[n] else f"<tr>{cells}</tr>")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headings)
    return f"<table><tr>{head}</tr>{''.join(lines)}</table>"


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "<td></td>"
    if isinstance(value, bool):
        return f"<td>{'yes' if value else 'no'}</td>"
    if isinstance(value, int):
        return f'<td class="n">{value:,}</td>'
    if isinstance(value, float):
        return f'<td class="n">{value:.4g}</td>'
    return f"<td>{text(value)}</td>"


def image(figure: Any) -> str:
    """A matplotlib figure as an ``<img>`` with a base64 PNG, the figure closed."""
    from matplotlib import pyplot

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=72, bbox_inches="tight")
    pyplot.close(figure)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="plot" src="data:image/png;base64,{data}">'


def pyplot_module() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: a server, a CI job
    from matplotlib import pyplot

    return pyplot


def lines_by_version(title: str, series: Sequence[tuple[str, Sequence[tuple[Any, Sequence[float | None]]]]],
                     names: Sequence[str], window: tuple[datetime, datetime]) -> str:
    """One row of small plots, one per metric in ``names``, a line per version over the window.

    ``series`` is [(version, [(time, [value per metric])])].
    """
    pyplot = pyplot_module()
    figure, axes = pyplot.subplots(1, len(names), figsize=(4 * len(names), 2.8), squeeze=False)
    for index, name in enumerate(names):
        axis = axes[0][index]
        for version, points in series:
            xs = [moment for moment, values in points if values[index] is not None]
            ys = [values[index] for _, values in points if values[index] is not None]
            axis.plot(xs, ys, marker=".", label=f"v{version}")
        axis.set_title(name, fontsize=10)
        axis.set_xlim(*window)  # the whole window, however few the points
        axis.tick_params(labelsize=7)
        for label in axis.get_xticklabels():
            label.set_rotation(30)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title, fontsize=11, y=1.04)
    return image(figure)


def distribution_plot(column: str, kind: str, labels: Sequence[str], window: Sequence[int],
                      reference: Sequence[int] | None) -> str:
    """A histogram (numeric) or bar chart (categories) of the window, the reference beside it, as shares."""
    pyplot = pyplot_module()
    figure, axis = pyplot.subplots(figsize=(3.6, 2.4))
    positions = list(range(len(labels)))
    total = sum(window) or 1
    if reference is not None:
        reference_total = sum(reference) or 1
        width = 0.4
        axis.bar([p - width / 2 for p in positions], [n / reference_total for n in reference], width,
                 label="reference", color="#9aa7b8")
        axis.bar([p + width / 2 for p in positions], [n / total for n in window], width, label="window",
                 color="#d9534f")
        axis.legend(fontsize=7)
    else:
        axis.bar(positions, [n / total for n in window], 0.8, color="#4a78b0")
    step = max(1, len(labels) // 6) if kind == "numeric" else 1
    axis.set_xticks(positions[::step])
    axis.set_xticklabels([label[:12] for label in labels[::step]], rotation=40, fontsize=7, ha="right")
    axis.tick_params(axis="y", labelsize=7)
    axis.set_title(column, fontsize=9)
    return image(figure)


def delay_plot(quantiles: Sequence[float]) -> str:
    """The label delay's distribution, as its deciles."""
    pyplot = pyplot_module()
    figure, axis = pyplot.subplots(figsize=(4.5, 2.4))
    axis.plot([n * 10 for n in range(len(quantiles))], [value / 3600 for value in quantiles], marker="o")
    axis.set_xlabel("percentile of labelled rows", fontsize=8)
    axis.set_ylabel("hours after the input", fontsize=8)
    axis.tick_params(labelsize=7)
    axis.set_title("label delay", fontsize=9)
    return image(figure)
