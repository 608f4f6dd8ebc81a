"""Crashes at a known point for the resume tests: the training core's kill point, and the record fields that
may differ between a killed-and-resumed run and an uninterrupted one (timings)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from lumbar_fast.testhooks import KILL_AFTER_EPOCHS_ENV

#: timing fields differ from run to run; everything else in a metrics record must repeat exactly
TIMINGS = ("train_seconds", "train_images_per_s", "train_slices_per_s", "epoch_seconds")


def killed_after_epochs(args: list[str], epochs: int, timeout_s: float = 600,
                        cwd: Path | None = None) -> None:
    """Run `lumbar-fast ARGS` (in folder `cwd`) until it SIGKILLs itself right after committing `epochs`
    epochs: a real crash at a known point, no polling."""
    result = subprocess.run([sys.executable, "-m", "lumbar_fast", *args], capture_output=True, text=True,
                            env={**os.environ, KILL_AFTER_EPOCHS_ENV: str(epochs)}, timeout=timeout_s,
                            cwd=cwd)
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]


def without_timings(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records with their timing fields left out."""
    return [{k: v for k, v in record.items() if k not in TIMINGS} for record in records]
