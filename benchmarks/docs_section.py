"""The benchmark tables of docs/benchmarks.md: each written by its script between a pair of marker comments."""

from __future__ import annotations

from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_between(begin: str, end: str, body: str, heading: str, docs: Path = DOCS) -> None:
    """Put ``body`` between the markers ``begin`` and ``end`` of ``docs``, or append the markers and ``body``
    under ``heading`` (a markdown heading) the first time."""
    text = docs.read_text()
    block = f"{begin}\n{body.rstrip(chr(10))}\n{end}"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n{block}\n"
    docs.write_text(text)
