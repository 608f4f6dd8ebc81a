"""User-facing errors: raised anywhere, printed by the CLI as one line with a non-zero exit code."""

from __future__ import annotations


class LumbarFastError(Exception):
    """An error caused by the user's input (files, arguments, data); the CLI prints `error: <message>`."""


class CacheError(LumbarFastError):
    """A cache that is missing, unreadable, or of another schema version / parameters."""


class DataError(LumbarFastError):
    """An RSNA data folder that is missing pieces or has malformed CSVs."""


class WorkerError(LumbarFastError):
    """A worker process that died mid-task (killed by the system, or crashed in native code)."""


#: what a net for "this file's (or series') problem alone" must let through: the user's interrupt and an
#: orderly exit. Everything else is caught as a BaseException, because the Rust decoders (pylibjpeg-rle)
#: panic with pyo3's PanicException, which derives from BaseException, not Exception.
NOT_A_FAILURE = (KeyboardInterrupt, SystemExit, GeneratorExit)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name if empty), for one-line errors."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def typed_line(exc: BaseException) -> str:
    """`Type: first line` of an exception (just `Type` when its message is empty), for one-line reasons."""
    line = first_line(exc)
    return line if line == type(exc).__name__ else f"{type(exc).__name__}: {line}"
