"""The report as aligned plain text (a terminal, the mail's text part) and as Markdown."""

from __future__ import annotations

from typing import Any

from resolver.presentation import markdown_text
from resolver.report.tables import (
    Name,
    empty_banner,
    footer,
    is_empty,
    language_of,
    numeric,
    period_line,
    report_title,
    sections,
)


def render_text(report: dict[str, Any]) -> str:
    """The report as aligned plain-text tables for a terminal or a text email."""
    lang = language_of(report)
    out = [report_title(report, lang), period_line(report, lang), ""]
    if is_empty(report):
        out += [empty_banner(report, lang), ""]
    for title, headers, rows, empty in sections(report, lang):
        out += [title, "-" * len(title)]
        if not rows:
            out += [empty, ""]
            continue
        table = ([headers] if any(headers) else []) + rows
        widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
        for n, row in enumerate(table):
            cells = [
                c.rjust(w) if numeric(c, lang) and (n or not any(headers)) else c.ljust(w)
                for c, w in zip(row, widths, strict=True)
            ]
            out.append("  ".join(cells).rstrip())
            if n == 0 and any(headers):
                out.append("  ".join("-" * w for w in widths))
        out.append("")
    out += footer(report, lang)
    return "\n".join(out) + "\n"


def _md_cell(text: str) -> str:
    if isinstance(text, Name):
        return f"`{text}`"  # presentation format holds no backtick: \\096
    return markdown_text(text).replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables for a wiki page or a ticket."""
    lang = language_of(report)
    out = [f"# {report_title(report, lang)}", "", period_line(report, lang), ""]
    if is_empty(report):
        out += [f"**{empty_banner(report, lang)}**", ""]
    for title, headers, rows, empty in sections(report, lang):
        out += [f"## {title}", ""]
        if not rows:
            out += [empty, ""]
            continue
        heads = headers if any(headers) else [lang._("Figure"), lang._("Value")]
        out.append("| " + " | ".join(_md_cell(h) for h in heads) + " |")
        out.append(
            "|"
            + "|".join("---:" if numeric(rows[0][i], lang) else "---" for i in range(len(heads)))
            + "|"
        )
        out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
        out.append("")
    out += [f"_{_md_cell(line)}_" for line in footer(report, lang)]
    return "\n".join(out) + "\n"
