"""The classifier's configuration: every argument of a run, checked and resolved before any work starts.

The seed's structure as defaults: cross-entropy, Adam (torch's default lr 1e-3), StepLR(step 2, gamma 0.1),
early stopping with patience 3, at most 5 epochs; augmentation, class weights, the early-stopping monitor and
calibration come from the recipe (`lumbar_fast.recipes`: measured per-sequence defaults, or the
seed's).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lumbar_fast import recipes, rsna
from lumbar_fast.calibration import CALIBRATIONS
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders import AugmentConfig
from lumbar_fast.models.classifier import PADDINGS, POOLINGS, SliceWindows, uses_windows
from lumbar_fast.runfolder import Panels
from lumbar_fast.training.config import RunConfig

VIEWS = ("level", "slice")
#: --monitor -> (validation record key, which way it improves)
MONITORS = {"accuracy": ("val_accuracy", "max"), "loss": ("val_loss", "min"),
            "rsna": ("val_weighted_log_loss", "min")}
CLASS_WEIGHTINGS = ("none", "metric", "inverse")
AMP_MODES = ("auto", "bf16", "fp16", "none")
#: curves.png of a classifier run: its loss beside the prior's, its accuracy beside the majority class's
PANELS: Panels = {
    "loss (baseline dashed)": (
        ("train_loss", "train loss (as trained: class-weighted, augmented)", "-"),
        ("val_loss", "val loss (unweighted)", "-"),
        ("val_weighted_log_loss", "val weighted log loss", "-"),
        ("val_prior_weighted_log_loss", "prior's weighted log loss", "--"),
        ("val_constant_weighted_log_loss", "best constant's weighted log loss", ":")),
    "accuracy (baseline dashed)": (
        ("train_accuracy", "train accuracy", "-"), ("val_accuracy", "val accuracy", "-"),
        ("val_balanced_accuracy", "val balanced accuracy", "-"),
        ("val_majority_accuracy", "majority class's accuracy", "--")),
}
#: negative controls, run by the real loop: the pipeline must NOT learn under them
CONTROLS = ("none", "shuffled-labels", "level-off")


@dataclass
class TrainConfig(RunConfig):
    """Every argument of a run; stored in config.json, so `resume` rebuilds the identical run from it."""

    model: str = "tf_efficientnetv2_s"
    pooling: str = recipes.AUTO  # stem, attention or gru (models/classifier.py); auto: by the crop's slices
    window_stride: int = 1
    window_padding: str = "valid"
    weights: str | None = None
    pretrained: bool = True
    epochs: int = 5
    batch_size: int = 32
    lr: float = 1e-3
    step_size: int = 2
    gamma: float = 0.1
    patience: int = 3
    recipe: str = "default"  # where the `auto` values below come from (lumbar_fast.recipes)
    monitor: str = recipes.AUTO
    class_weights: str = recipes.AUTO
    label_smoothing: float = 0.0  # cross-entropy's target smoothing (noisy raters' labels)
    calibration: str = recipes.AUTO  # none or temperature, fitted on the validation fold at the end
    cuda_graphs: bool = False
    compile: bool = False
    view: str = "level"
    control: str = "none"
    augment: str = recipes.AUTO  # none, all, or a comma list of recipes.AUGMENTATIONS
    shift: float = AugmentConfig.shift
    loader: str = "auto"
    workers: int = 2
    limit_batches: int | None = None

    def resolved(self, slices: int) -> TrainConfig:
        """A copy with every `auto` replaced by the recipe's value for the sequence and for crops of
        `slices` slices (what config.json records); windows that do not tile the crop, or window options
        for the plain model, are refused."""
        rsna.get_sequence(self.sequence)
        chosen = recipes.resolve(self.recipe, self.sequence, recipes.Recipe(
            augment=self.augment, class_weights=self.class_weights, monitor=self.monitor,
            calibration=self.calibration))
        pooling = recipes.pooling_for(self.pooling, slices)
        if uses_windows(pooling):
            SliceWindows(slices, self.window_stride, self.window_padding).check()
        elif (self.window_stride, self.window_padding) != (1, "valid"):
            raise LumbarFastError(f"--window-stride and --window-padding shape the windows of a multi-slice "
                                  f"model; the plain model ({pooling} on {slices}-slice crops) has none")
        return dataclasses.replace(self, **dataclasses.asdict(chosen), pooling=pooling)

    def check(self) -> None:
        """Refuse inconsistent arguments with one line each, before any work starts."""
        self.check_run()
        auto = (recipes.AUTO,)
        choices = {"view": VIEWS, "monitor": (*MONITORS, *auto), "class_weights": (*CLASS_WEIGHTINGS, *auto),
                   "amp": AMP_MODES, "control": CONTROLS, "recipe": recipes.RECIPES,
                   "pooling": (*POOLINGS, *auto), "window_padding": PADDINGS,
                   "calibration": (*CALIBRATIONS, *auto)}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LumbarFastError(f"--{name.replace('_', '-')} must be one of {', '.join(allowed)}")
        if (self.epochs < 1 or self.batch_size < 1 or self.patience < 1
                or (self.limit_batches is not None and self.limit_batches < 1)):
            raise LumbarFastError("--epochs, --batch-size, --patience and --limit-batches must be at least 1")
        self.check_lr(self.lr)
        if not 0 <= self.label_smoothing < 1:
            raise LumbarFastError(f"--label-smoothing {self.label_smoothing} is outside 0..1")
        if not 0 <= self.shift <= 0.5:
            raise LumbarFastError(f"--shift {self.shift} is outside 0..0.5 (a fraction of the crop's width)")
        if self.cuda_graphs and self.compile:
            raise LumbarFastError("choose one of --cuda-graphs and --compile")

    def run_name(self, stamp: str) -> str:
        """A new run's folder name in --out: `{sequence}-{view}-fold{k}-{time}`, then the control if any."""
        name = f"{self.sequence}-{self.view}-fold{self.fold}-{stamp}"
        return name if self.control == "none" else f"{name}-{self.control}"
