"""bench/RESULTS.md is one file for every benchmark: each run appends its section."""
from __future__ import annotations

from pathlib import Path


def append_results(path: Path, markdown: str) -> None:
    """Append one run's Markdown (header, tables, reproducing command) to ``path``.

    A top-level ``# title`` becomes ``## title`` so that sections nest under the file's own title.
    """
    text = markdown.strip()
    if text.startswith("# "):
        text = "#" + text
    with Path(path).open("a", encoding="utf-8") as f:
        f.write("\n\n---\n\n" + text + "\n")
