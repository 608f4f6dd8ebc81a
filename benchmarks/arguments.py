"""What a benchmark's command line needs and nothing more (the standard library and lumbar_fast.errors):
the bare decode loop, whose processes are timed from their start, imports it without pandas."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from lumbar_fast.errors import LumbarFastError


def count(minimum: int = 1) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (a count of 0 workers or repeats fails later, in a
    traceback)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value
    return parse


def run_main(main: Callable[[], object]) -> None:
    """A benchmark's entry point: its one-line errors (bad arguments, a failed step) as `error: …`, exit 2."""
    try:
        main()
    except LumbarFastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
