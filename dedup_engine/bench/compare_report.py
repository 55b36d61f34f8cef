"""Write a `Comparison` as the files `dedup bench compare` leaves: JSON, CSV, an SVG chart and a
Markdown table (the table the CLI prints, ready for the docs).

Like `compare`, it imports neither typer nor rich.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from xml.sax.saxutils import escape

from dedup_engine.bench.compare import REFERENCE, Comparison, ToolSummary
from dedup_engine.report.display import human_size

SCHEMA = 1
#: The files written, as `comparison.<kind>`, in this order.
KINDS = ("json", "csv", "svg", "md")
CSV_COLUMNS = (
    "name", "version", "runs", "median_wall", "min_wall", "max_wall", "median_cpu", "peak_rss",
    "groups", "files_in_groups", "agrees", "relative",
)  # fmt: skip
#: The table's columns, as printed and as written in Markdown.
TABLE_COLUMNS = (
    "tool", "version", "median", "min", "max", "CPU", "peak RSS", "groups", "files", "agrees",
    f"vs {REFERENCE}",
)  # fmt: skip
#: Text columns; the others are figures, aligned right.
TEXT_COLUMNS = frozenset({"tool", "version", "agrees"})


def write_all(c: Comparison, directory: Path) -> list[Path]:
    """Every file, in KINDS order; the paths written."""
    writers = {"json": write_json, "csv": write_csv, "svg": write_svg, "md": write_markdown}
    paths = [directory / f"comparison.{kind}" for kind in KINDS]
    for kind, path in zip(KINDS, paths, strict=True):
        writers[kind](c, path)
    return paths


def title(c: Comparison) -> str:
    how = f"cold ({c.cold})" if c.cold else "warm page cache"
    return f"{c.root}: {c.runs} interleaved runs, {how}"


def table_row(t: ToolSummary) -> tuple[str, ...]:
    """One tool's cells, in TABLE_COLUMNS order."""
    return (
        t.name,
        t.version,
        f"{t.median_wall:.3f} s",
        f"{t.min_wall:.3f} s",
        f"{t.max_wall:.3f} s",
        f"{t.median_cpu:.3f} s",
        human_size(t.peak_rss),
        f"{t.groups:,}",
        f"{t.files_in_groups:,}",
        "yes" if t.agrees else "NO",
        f"{t.relative:.2f}x",
    )


def notes(c: Comparison) -> list[str]:
    """What the table leaves out: each group a tool found differently, and each tool skipped."""
    lines = [f"{t.name} differs: {d}" for t in c.tools for d in t.differences]
    return lines + [f"skipped {name}: {reason}" for name, reason in c.skipped]


# --- JSON and CSV --------------------------------------------------------------------------------


def to_dict(c: Comparison) -> dict[str, object]:
    data = asdict(c)
    data["skipped"] = [{"name": n, "reason": r} for n, r in c.skipped]
    return {"schema": SCHEMA, **data}


def write_json(c: Comparison, path: Path) -> None:
    path.write_text(json.dumps(to_dict(c), indent=2) + "\n", encoding="ascii")


def write_csv(c: Comparison, path: Path) -> None:
    with path.open("w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for t in c.tools:
            row = {**asdict(t), "runs": len(t.runs)}
            writer.writerow([row[k] for k in CSV_COLUMNS])


# --- Markdown -----------------------------------------------------------------------------------


def _cell(value: str) -> str:
    """A table cell's text: no pipe that would end the cell, no control character."""
    return "".join(ch if ch >= " " else "?" for ch in value).replace("|", "\\|")


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_cell(cell) for cell in cells) + " |"


def markdown(c: Comparison) -> str:
    """The printed table in Markdown, under a line saying how it was measured."""
    cpus = f"{c.cpus} CPUs" if c.cpus else "CPUs unknown"
    lines = [
        f"{_cell(title(c))}, after {c.warmup} warm-up; {cpus}; {c.created}",
        "",
        _md_row(TABLE_COLUMNS),
        "|" + "|".join("---" if col in TEXT_COLUMNS else "---:" for col in TABLE_COLUMNS) + "|",
        *(_md_row(table_row(t)) for t in c.tools),
    ]
    extra = notes(c)
    if extra:
        lines += ["", *(f"- {_cell(note)}" for note in extra)]
    return "\n".join(lines) + "\n"


def write_markdown(c: Comparison, path: Path) -> None:
    path.write_text(markdown(c), encoding="utf-8", errors="surrogateescape")


# --- SVG ----------------------------------------------------------------------------------------

_LEFT, _BAR_W, _ROW_H, _TOP = 170, 460, 36, 64


def _text(value: str) -> str:
    """XML-safe text: no lone surrogates, no control characters."""
    clean = value.encode("utf-8", "replace").decode("utf-8")
    return escape("".join(ch if ch >= " " else "?" for ch in clean))


def _line(x1: float, x2: float, y1: float, y2: float) -> str:
    return f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="#222"/>'


def write_svg(c: Comparison, path: Path) -> None:
    """One bar per tool (median wall, fastest first) with a min-max whisker and labels.

    The axis ends at 1.3 times the largest median, so one slow outlier run cannot squash every
    bar; a whisker cut there ends in an arrow head and its maximum is printed.
    """
    rows = sorted(c.tools, key=lambda t: t.median_wall)
    limit = max([t.median_wall for t in rows] + [1e-9]) * 1.3
    parts = _svg_head(c, _LEFT + _BAR_W + 280, _TOP + _ROW_H * len(rows) + 24)
    for n, t in enumerate(rows):
        parts += _svg_bar(t, _TOP + n * _ROW_H, limit)
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")


def _svg_head(c: Comparison, width: int, height: int) -> list[str]:
    how = f"cold cache ({c.cold})" if c.cold else "warm cache"
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="12" y="24" font-size="16" font-weight="bold">{_text(c.root)}</text>',
        f'<text x="12" y="44" fill="#555">median wall time of {c.runs} runs after {c.warmup} '
        f"warm-up, {how}; whisker: min-max; {_text(c.created)}</text>",
    ]


def _svg_bar(t: ToolSummary, y: float, limit: float) -> list[str]:
    """One tool's row: name and version, the bar, the whisker and the figures."""
    scale = _BAR_W / limit
    mid = y + (_ROW_H - 8) / 2
    colour = "#e8590c" if t.name == REFERENCE else "#4c6ef5"
    bar = max(min(t.median_wall, limit) * scale, 1.0)
    lo, hi = _LEFT + min(t.min_wall, limit) * scale, _LEFT + min(t.max_wall, limit) * scale
    cut = t.max_wall > limit
    note = f" (max {t.max_wall:.3f} s)" if cut else ""
    note += "" if t.agrees else "  DIFFERENT GROUPS"
    return [
        f'<text x="{_LEFT - 8}" y="{mid:.1f}" text-anchor="end" font-weight="bold">'
        f"{_text(t.name)}</text>",
        f'<text x="{_LEFT - 8}" y="{mid + 13:.1f}" text-anchor="end" font-size="10" '
        f'fill="#777">{_text(t.version)}</text>',
        f'<rect x="{_LEFT}" y="{y:.1f}" width="{bar:.1f}" height="{_ROW_H - 8}" '
        f'fill="{colour}"><title>{_text(" ".join(t.command))}</title></rect>',
        _line(lo, hi, mid, mid),
        _line(lo, lo, mid - 5, mid + 5),
        _line(hi - 6, hi, mid - 5, mid) + _line(hi - 6, hi, mid + 5, mid)
        if cut
        else _line(hi, hi, mid - 5, mid + 5),
        f'<text x="{max(hi, _LEFT + bar) + 8:.1f}" y="{mid + 4:.1f}">'
        f"{t.median_wall:.3f} s  {t.relative:.2f}\u00d7 {REFERENCE}{_text(note)}</text>",
    ]
