"""Plain-text tables for people: columns padded by display width (a CJK character takes two cells)."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from datetime import datetime


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1 for ch in text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[_text(c) for c in row] for row in rows]
    widths = [max([width(h)] + [width(row[i]) for row in cells]) for i, h in enumerate(headers)]
    lines = [_line(headers, widths), _line(["-" * w for w in widths], widths)]
    lines += [_line(row, widths) for row in cells]
    return "\n".join(lines)


def when(value: str | None) -> str:
    """An ISO time from the API as `YYYY-MM-DD HH:MM` (UTC), or "-"."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return value


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    padded = [cell + " " * (w - width(cell)) for cell, w in zip(cells, widths)]
    return "  ".join(padded).rstrip()


def _text(value: object) -> str:
    if value is None:
        return "-"
    text = str(value).replace("\n", " ")
    return text
