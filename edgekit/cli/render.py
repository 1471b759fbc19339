"""Output helpers shared by the command modules: JSON for machines, rich tables for people.

Everything printed for people goes through :func:`clean` first: device names, providers, error
messages and paths can come from a device or a bundle, and a hostile one must not reach the
terminal with escape sequences (clear screen, window title, OSC 8 links) or rich markup
(``[link=...]``, ``[/]``). Table cells and titles are rich ``Text`` objects, which rich never parses
as markup, so no string needs markup escaping afterwards.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any, Iterable, List, Optional, Sequence

import click

from ..fleet_results import to_jsonable

# C0 controls but tab and newline, DEL, C1 controls (CSI/OSC as single bytes), and the Unicode
# format characters that reorder or hide text (bidi overrides and isolates, zero-width joiners).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_ESCAPE_SEQUENCE = re.compile(r"\x1b(\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)?|[@-Z\\-_])")


def clean(value: Any, *, newlines: bool = True) -> str:
    """``value`` as text safe for a terminal: whole escape sequences removed (so no stray ``[2J``
    is left behind), then every remaining control character. ``newlines=False`` also folds line
    breaks, for the one-line ``error:``/``hint:`` output."""
    text = _CONTROL.sub("", _ESCAPE_SEQUENCE.sub("", str(value)))
    if not newlines:
        text = " ".join(text.split("\n")).replace("\t", " ")
    return text


def echo_json(value: Any) -> None:
    # json.dumps writes every control character as a \u escape, so JSON output needs no cleaning.
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=True, default=str))


def echo(message: Any, err: bool = False) -> None:
    """A plain line for people (``wrote ...``, notes), cleaned like every table cell."""
    click.echo(clean(message), err=err)


def table(title: Optional[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[clean(c) for c in columns]] + [["" if v is None else clean(v) for v in r] for r in rows]
    if not sys.stdout.isatty():
        # Pipes and CI logs: plain aligned text, each line only as long as its content (never a
        # 200-column box padded with blanks), and never cut: a log keeps every character.
        _plain_table(title, cells)
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(clean(title)) if title is not None else None, title_justify="left")
    for c in cells[0]:
        t.add_column(Text(c))
    for r in cells[1:]:
        t.add_row(*[Text(v) for v in r])
    Console().print(t)


PLAIN_COLUMN_MAX = 40
"""In plain output a column is padded to at most this width; a longer cell just pushes its line on."""


def _plain_table(title: Optional[str], cells: List[List[str]]) -> None:
    if title is not None:
        click.echo(clean(title, newlines=False))
    flat = [[" ".join(c.split()) for c in row] for row in cells]
    widths = [min(PLAIN_COLUMN_MAX, max(len(row[i]) for row in flat if i < len(row))) for i in range(len(flat[0]))]
    for row in flat:
        parts = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        click.echo("  ".join(parts).rstrip())


def kv(title: Optional[str], pairs: List[tuple]) -> None:
    table(title, ["field", "value"], pairs)
