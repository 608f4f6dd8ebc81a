"""Early stopping on one monitored validation value, with rank 0's verdict adopted by every rank."""

from __future__ import annotations

import math
from typing import Any

from lumbar_fast import distributed

#: a monitored value improves when it rises ("max") or falls ("min")
MODES = ("max", "min")


class EarlyStopping:
    """Stops after `patience` epochs without improvement of the monitored value; remembers the best epoch."""

    def __init__(self, mode: str, patience: int) -> None:
        self.mode = mode
        self.patience = patience
        self.best: float | None = None
        self.best_epoch = -1
        self.bad_epochs = 0

    def update(self, value: float | None, epoch: int) -> bool:
        """Record one epoch's value; True when it is the best so far. A value that is no finite number (a
        diverged loss: NaN, or None in a record) is never the best, so it cannot block every later epoch."""
        if value is None or not math.isfinite(value):
            better = False
        else:
            better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return better

    @property
    def should_stop(self) -> bool:
        """True once `patience` epochs in a row failed to improve."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """The state a checkpoint stores."""
        return {"mode": self.mode, "patience": self.patience, "best": self.best,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint (a NaN best, which a version before finite-only bests could record, as
        no best: every finite value beats it)."""
        best = state["best"]
        self.mode, self.patience = state["mode"], state["patience"]
        self.best = best if best is not None and math.isfinite(best) else None
        self.best_epoch, self.bad_epochs = state["best_epoch"], state["bad_epochs"]


def update_everywhere(stopper: EarlyStopping, value: float, epoch: int) -> bool:
    """Record the epoch's monitored value; rank 0's verdict and state are adopted by every rank, so that
    all ranks stop at the same epoch. True when the epoch is the best so far."""
    improved = stopper.update(value, epoch)
    improved, state = distributed.broadcast((improved, stopper.state_dict()))
    stopper.load_state_dict(state)
    return improved
