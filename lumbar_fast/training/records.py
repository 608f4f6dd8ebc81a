"""Per-epoch records: JSON-ready values, and the progress bar a task's epoch shows."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from tqdm import tqdm


def plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays become Python numbers and lists, non-finite floats None."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def shown(record: dict[str, Any], key: str, digits: int) -> str:
    """A record's number for an epoch line with `digits` decimals; "n/a" where the record holds None (a
    non-finite value, `plain`) or nothing."""
    value = record.get(key)
    return "n/a" if value is None else f"{value:.{digits}f}"


class EpochBar:
    """A training epoch's progress bar, with the throughput of `unit` (images, slices) per second."""

    def __init__(self, epoch: int, total: int, step_unit: str, rate_unit: str, enabled: bool) -> None:
        self.bar = tqdm(total=total, desc=f"epoch {epoch + 1}", unit=step_unit, disable=not enabled,
                        leave=False)
        self.rate_unit = rate_unit
        self.start = time.perf_counter()

    def advance(self, done: int) -> None:
        """One step more; `done` units so far this epoch."""
        self.bar.update(1)
        self.bar.set_postfix_str(f"{done / (time.perf_counter() - self.start):.0f} {self.rate_unit}/s",
                                 refresh=False)

    def seconds(self) -> float:
        """Seconds since the epoch started."""
        return time.perf_counter() - self.start

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
