"""Notes: one line each, said once, for settings that are accepted but whose job is gone or done
another way (most of them 2020 settings), and for settings that do less than they seem to, such
as augment.* beside a plain probe grid.

A gin function that accepts such a setting calls `note(...)`; `print_notes` prints every note
not printed yet in this process: the driver calls it after checking the sweep, before anything
runs, and every trial calls it when built (a Ray worker's notes reach the trial's output, e.g.
for values a searcher drew that the driver never saw).
"""

from __future__ import annotations

import sys

_NOTES: dict[str, None] = {}  # insertion-ordered set, waiting to be printed
_PRINTED: set[str] = set()


def note(text: str) -> None:
    if text not in _PRINTED:
        _NOTES[text] = None


def print_notes() -> None:
    for text in _NOTES:
        print(f"note: {text}", file=sys.stderr)
        _PRINTED.add(text)
    _NOTES.clear()


def seen() -> set[str]:
    """Every note made in this process, printed or not."""
    return _PRINTED | set(_NOTES)


def forget_printed() -> None:
    """A reused worker's next trial prints its notes again."""
    _PRINTED.clear()
