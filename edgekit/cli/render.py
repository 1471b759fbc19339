"""Output helpers shared by the command modules: JSON for machines, rich tables for people."""
from __future__ import annotations

import json
from typing import Any, Iterable, List, Optional, Sequence

import click


def to_jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


def echo_json(value: Any) -> None:
    click.echo(json.dumps(to_jsonable(value), indent=2, sort_keys=True, default=str))


def table(title: Optional[str], columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*["" if v is None else str(v) for v in r])
    console = Console()
    if not console.is_terminal:  # pipes and CI logs: don't squeeze columns into 80 characters
        console = Console(width=200)
    console.print(t)


def kv(title: Optional[str], pairs: List[tuple]) -> None:
    table(title, ["field", "value"], pairs)
