"""The one table renderer of crankmesh: every table a person reads goes through here.

Built on `rich <https://rich.readthedocs.io>`_.  :func:`render_table` gives plain text
(no colour, no borders, columns two spaces apart, no trailing blanks): what
``Explanation.render()``, the audit report and the CLI print when the output is a pipe
or a file, and what tests compare.  :func:`table` gives the same table as a
:class:`rich.table.Table` with colours for a terminal (``crankmesh top``'s live view).

No I/O of its own: rendering writes into a string buffer.  ``rich`` is imported on first
use, so importing this module costs nothing on the job path.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["render_table", "table", "to_text"]


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Iterable[int] = (),
    styles: Mapping[int, str] | None = None,
    row_styles: Sequence[str | None] | None = None,
    title: str | None = None,
) -> Any:
    """A :class:`rich.table.Table`: ``right`` are right-aligned column indexes, ``styles``
    a rich style per column, ``row_styles`` one per row (None: none)."""
    from rich.table import Table

    aligned = set(right)
    t = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=False,
        show_header=True,
        header_style="bold" if styles else "",
        title=title,
        title_justify="left",
    )
    for i, name in enumerate(header):
        t.add_column(
            name,
            justify="right" if i in aligned else "left",
            no_wrap=True,
            style=(styles or {}).get(i, ""),
        )
    for n, row in enumerate(rows):
        style = row_styles[n] if row_styles is not None and n < len(row_styles) else None
        t.add_row(*row, style=style)
    return t


def to_text(renderable: Any, *, width: int = 10_000, color: bool = False) -> str:
    """Render anything rich can render to a string (``color``: with ANSI styles)."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(
        file=buf,
        width=width,
        color_system="standard" if color else None,
        force_terminal=color,
        no_color=not color,
        highlight=False,
        emoji=False,
        markup=False,
        soft_wrap=False,
    )
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").split("\n"))


def render_table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    right: Iterable[int] = (),
    indent: int = 0,
    rule: bool = False,
) -> str:
    """Plain-text table (see the module docstring); each line prefixed by ``indent``
    spaces."""
    rows = [tuple(r) for r in rows]
    text = to_text(table(header, rows, right=right))
    lines = text.split("\n")
    if rule:
        from rich.cells import cell_len

        widths = [
            max(cell_len(str(r[i])) for r in [tuple(header), *rows]) for i in range(len(header))
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
    pad = " " * indent
    return "\n".join((pad + line).rstrip() for line in lines)
