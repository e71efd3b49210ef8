"""2020 settings whose job is gone or done another way: accepted, and said once, in one line each.

A gin function that accepts such a setting calls `note(...)`; the driver prints every note
gathered while it checks the sweep (`print_notes`), before anything runs.
"""

from __future__ import annotations

import sys

_NOTES: dict[str, None] = {}  # insertion-ordered set


def note(text: str) -> None:
    _NOTES[text] = None


def print_notes() -> None:
    for text in _NOTES:
        print(f"note: {text}", file=sys.stderr)
    _NOTES.clear()
