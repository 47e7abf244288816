"""docs/benchmarks.md is written by several benchmark scripts; each owns one marked section."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, name: str, text: str) -> None:
    """Put text between `<!-- name:start -->` and `<!-- name:end -->` in path (appending the
    markers if the file lacks them), leaving every other section as it was."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    doc = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{start}\n{text.rstrip()}\n{end}"
    if start in doc and end in doc:
        a, b = doc.index(start), doc.index(end) + len(end)
        doc = doc[:a] + block + doc[b:]
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    path.write_text(doc)
