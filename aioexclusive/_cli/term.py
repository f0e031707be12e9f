"""Output for people: colour through the optional ``rich``, plain text otherwise.

Colour only when it helps someone reading a terminal: ``--color auto`` (the
default) uses rich when it is installed, stdout is a terminal and ``NO_COLOR``
is unset. Redirected output is always plain text, so scripts and tests see
the same words as a person does, without escape codes or re-wrapped lines.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["Out"]

# The few meanings that get a colour; plain text carries the same words.
_STYLES = {
    "bad": "bold red",
    "good": "bold green",
    "note": "dim",
    "head": "bold",
    "mark": "bold cyan",
}


class Out:
    """Writes lines and tables to *stream*, in colour when that is wanted and possible."""

    def __init__(self, color: str = "auto", stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self._console: Any = None
        if color == "never" or (color == "auto" and (os.environ.get("NO_COLOR") or not self.stream.isatty())):
            return
        try:
            from rich.console import Console
        except ImportError:
            return
        self._console = Console(
            file=self.stream, highlight=False, soft_wrap=True, force_terminal=True if color == "always" else None
        )

    @property
    def rich(self) -> bool:
        return self._console is not None

    def line(self, text: str = "", style: str | None = None) -> None:
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(text, style=_STYLES.get(style or "", "")))
        else:
            self.stream.write(text + "\n")
            self.stream.flush()

    def parts(self, *parts: tuple[str, str | None]) -> None:
        """One line made of (text, style) pieces."""
        if self._console is not None:
            from rich.text import Text

            text = Text()
            for piece, style in parts:
                text.append(piece, style=_STYLES.get(style or "", ""))
            self._console.print(text)
        else:
            self.line("".join(piece for piece, _ in parts))

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]], *, marked: Sequence[bool] = ()) -> None:
        """Aligned columns; rows with a true *marked* entry are highlighted (and starred in plain text)."""
        widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

        # The last column (a reason) is left unpadded so lines do not trail spaces.
        def fmt(cells: Sequence[str], star: str) -> str:
            padded = [str(c).ljust(w) for c, w in zip(cells[:-1], widths[:-1])] + [str(cells[-1])]
            return f"{star} " + "  ".join(padded)

        self.line(fmt(headers, " "), "head")
        for index, row in enumerate(rows):
            is_marked = index < len(marked) and marked[index]
            self.line(fmt(row, "*" if is_marked else " "), "mark" if is_marked else None)

    def grouped_table(
        self, headers: Sequence[str], rows: Sequence[Sequence[str]], *, marked: Sequence[bool] = ()
    ) -> None:
        """Like `table`, but the first column becomes a heading line above each run of equal values."""
        widths = [max(len(str(cell)) for cell in column) for column in zip(headers[1:], *(r[1:] for r in rows))]

        def fmt(cells: Sequence[str], star: str) -> str:
            padded = [str(c).ljust(w) for c, w in zip(cells[:-1], widths[:-1])] + [str(cells[-1])]
            return f"  {star} " + "  ".join(padded)

        self.line(fmt(headers[1:], " "), "head")
        previous = None
        for index, row in enumerate(rows):
            if row[0] != previous:
                self.line(row[0], "head")
                previous = row[0]
            is_marked = index < len(marked) and marked[index]
            self.line(fmt(row[1:], "*" if is_marked else " "), "mark" if is_marked else None)
