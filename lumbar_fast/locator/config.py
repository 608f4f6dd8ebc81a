"""The locator's configuration: every argument of a run, checked before any work starts, and what its run
folder shows (curves.png's panels, the values --monitor may watch)."""

from __future__ import annotations

from dataclasses import dataclass

from lumbar_fast import distributed
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.runfolder import Panels
from lumbar_fast.training.config import RunConfig

#: the `kind` a locator run's config.json and checkpoints carry (classifier runs carry none)
KIND = "locator"
#: validation value watched by early stopping and best.pt -> (metrics key, mode)
MONITORS = {"loss": ("val_loss", "min"), "point-error": ("val_point_error_median_mm", "min")}
#: curves.png of a locator run
PANELS: Panels = {
    "loss": (("train_loss", "train loss", "-"), ("val_loss", "val loss", "-")),
    "point error, mm (baseline dashed)": (
        ("val_point_error_median_mm", "val median", "-"), ("val_point_error_p90_mm", "val p90", "-"),
        ("baseline_point_error_median_mm", "mean-position baseline median", "--")),
    "share of points": (("val_slice_within_1", "slice within ±1", "-"),
                        ("val_level_name_accuracy", "right level name", "-")),
}


@dataclass
class LocatorConfig(RunConfig):
    """Every argument of a locator run; stored in config.json, so `resume` rebuilds the identical run."""

    model: str = "resnet18"
    pretrained: bool = True
    image_size: int = 160
    width: int = 32
    #: 15, not 30: on an off-centre phantom (docs/locator.md, "How many epochs") sag_t1 and ax_t2 reached the
    #: same median error (within its intervals), slice and level in half the time; sag_t2 was as good at 10
    epochs: int = 15
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    monitor: str = "loss"
    max_slices: int = 64
    augment: bool = True
    limit_series: int | None = None
    kind: str = KIND  # tells evaluate (and a reader of config.json) that this is a locator run

    def run_name(self, stamp: str) -> str:
        """A new run's folder name in --out: `locator-{sequence}-fold{k}-{time}`."""
        return f"locator-{self.sequence}-fold{self.fold}-{stamp}"

    def check(self) -> None:
        """Refuse inconsistent arguments with one line each, before any work starts."""
        self.check_run()
        if self.kind != KIND:
            raise LumbarFastError(f"a locator run's kind is {KIND!r}, not {self.kind!r}")
        if self.monitor not in MONITORS:
            raise LumbarFastError(f"--monitor must be one of {', '.join(MONITORS)}")
        if (self.epochs < 1 or self.patience < 1 or self.width < 1 or self.max_slices < 3
                or self.image_size < 32 or (self.limit_series is not None and self.limit_series < 1)):
            raise LumbarFastError("--epochs, --patience, --width and --limit-series must be at least 1, "
                                  "--max-slices at least 3 and --image-size at least 32")
        self.check_lr(self.lr)


def refuse_several_processes() -> None:
    """A locator trains in one process: under torchrun every rank would train the same run on its own, so it
    is refused in one line before the process group starts."""
    if distributed.world_size() > 1:
        raise LumbarFastError(f"train-locator runs in one process, not {distributed.world_size()}: start it "
                              "without torchrun (a locator trains one series per step on one GPU)")
