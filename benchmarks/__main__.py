"""`python -m benchmarks NAME ARGS...` runs one benchmark, as `python -m benchmarks.NAME ARGS...` does, but
from a main module that imports nothing: DALI's spawned workers re-import the main module, and each would
otherwise load torch and timm again before it reads its first crop (seconds per worker on a small CPU)."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("data", "decode", "ingest", "loader", "pipeline", "train")


def main(argv: list[str]) -> None:
    usage = f"usage: python -m benchmarks {{{','.join(BENCHMARKS)}}} [ARGS...] (NAME --help: its options)"
    if argv[:1] in (["-h"], ["--help"]):
        print(usage)
        return
    if not argv or argv[0] not in BENCHMARKS:
        sys.exit(usage)
    name, arguments = argv[0], argv[1:]
    sys.argv[1:] = arguments  # the JSON record's command reads `python -m benchmarks.NAME ARGS...`
    from benchmarks.arguments import run_main  # lumbar_fast.errors and the standard library: nothing heavy

    run_main(lambda: importlib.import_module(f"benchmarks.{name}").main(arguments))


if __name__ == "__main__":
    main(sys.argv[1:])
