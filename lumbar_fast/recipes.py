"""Training recipes: the seed paper's, and the per-sequence defaults chosen by the recipe study.

A run's augmentation, class weights and early-stopping monitor may be left at `auto`: `resolve` then takes
them from the chosen recipe for the run's sequence, and the run's config.json records the resolved values
(so `--resume` and `--nproc`, which re-runs the command with its non-default options only, see the same).
The numbers behind every default are in docs/recipe.md (`python -m benchmarks.studies.recipe` reproduces
them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from lumbar_fast.errors import LumbarFastError
from lumbar_fast.loaders.augment import AugmentConfig

AUTO = "auto"
#: the augmentation pieces, each a range of AugmentConfig that is zero when the piece is off
AUGMENTATIONS = ("rotate", "scale", "shift", "hflip", "intensity")
NO_AUGMENTATION = "none"
RECIPES = ("default", "seed")


@dataclass(frozen=True)
class Recipe:
    """What a recipe fixes for one sequence: augmentation pieces, cross-entropy class weights, monitor,
    calibration."""

    augment: str  # "none" or a comma list of AUGMENTATIONS, in that order
    class_weights: str  # none, metric or inverse
    monitor: str  # accuracy, loss or rsna
    calibration: str  # none or temperature (lumbar_fast.calibration)


#: the seed paper: unweighted cross-entropy, accuracy as the monitor, no augmentation, no calibration
SEED = Recipe(augment=NO_AUGMENTATION, class_weights="none", monitor="accuracy", calibration="none")
#: measured defaults (docs/recipe.md): the competition's weighted log loss as the monitor and the metric's
#: 1/2/4 class weights everywhere; every geometric and intensity augmentation that keeps the graded
#: structure, without the horizontal flip (an anterior-posterior mirror on sagittal images, and the undoing
#: of the canonical side of axial crops); no calibration (a temperature fitted on the labelled validation fold
#: left the score at labelled points as it was and worsened it at located ones)
DEFAULTS: dict[str, Recipe] = {
    "sag_t1": Recipe(augment="rotate,scale,shift,intensity", class_weights="metric", monitor="rsna",
                     calibration="none"),
    "sag_t2": Recipe(augment="rotate,scale,shift,intensity", class_weights="metric", monitor="rsna",
                     calibration="none"),
    "ax_t2": Recipe(augment="rotate,scale,shift,intensity", class_weights="metric", monitor="rsna",
                     calibration="none"),
}


#: the pooling of crops with more than three slices (docs/multislice.md); three-slice crops keep the plain
#: timm model, whose first convolution takes the three slices as RGB
MULTI_SLICE_POOLING = "attention"


def pooling_for(pooling: str, slices: int) -> str:
    """A run's pooling: `auto` is the plain model (`stem`) for three-slice crops, MULTI_SLICE_POOLING for
    more."""
    if pooling != AUTO:
        return pooling
    return "stem" if slices <= 3 else MULTI_SLICE_POOLING


def recipe_for(name: str, sequence: str) -> Recipe:
    """The named recipe's settings for `sequence`."""
    if name not in RECIPES:
        raise LumbarFastError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    return SEED if name == "seed" else DEFAULTS[sequence]


def resolve(name: str, sequence: str, given: Recipe) -> Recipe:
    """The run's settings: each `auto` of `given` taken from the named recipe, the others as given (augment
    normalised)."""
    recipe = recipe_for(name, sequence)
    augment = recipe.augment if given.augment == AUTO else normalise_augment(given.augment)
    chosen = {key: getattr(recipe if value == AUTO else given, key)
              for key, value in dataclasses.asdict(given).items()}
    return Recipe(**{**chosen, "augment": augment})


def normalise_augment(text: str) -> str:
    """`none`, `all` or a comma list of pieces, as `none` or the pieces in AUGMENTATIONS order; one-line
    error for an unknown piece."""
    if text == "all":
        return ",".join(AUGMENTATIONS)
    pieces = {piece.strip() for piece in text.split(",") if piece.strip()} - {NO_AUGMENTATION}
    unknown = sorted(pieces - set(AUGMENTATIONS))
    if unknown:
        raise LumbarFastError(f"unknown augmentation {unknown[0]!r} in --augment {text!r}; give auto, none, "
                              f"all or a comma list of {', '.join(AUGMENTATIONS)}")
    return ",".join(piece for piece in AUGMENTATIONS if piece in pieces) or NO_AUGMENTATION


def flips_horizontally(augment: str) -> bool:
    """Whether a run trained with this (recorded) augment value saw horizontally mirrored crops: its
    test-time augmentation may then average over the mirror."""
    return "hflip" in augment_pieces(normalise_augment(augment))


def augment_pieces(augment: str) -> tuple[str, ...]:
    """The pieces of a normalised augment value."""
    return () if augment == NO_AUGMENTATION else tuple(augment.split(","))


def augment_config(augment: str, shift: float) -> AugmentConfig | None:
    """The loaders' augmentation for an augment value other than `auto` (None: none); `shift` is the
    shift piece's range, a fraction of the crop's width."""
    pieces = augment_pieces(normalise_augment(augment))
    if not pieces:
        return None
    ranges = AugmentConfig()
    return AugmentConfig(
        rotate_deg=ranges.rotate_deg if "rotate" in pieces else 0.0,
        scale=ranges.scale if "scale" in pieces else 0.0,
        shift=shift if "shift" in pieces else 0.0,
        brightness=ranges.brightness if "intensity" in pieces else 0.0,
        contrast=ranges.contrast if "intensity" in pieces else 0.0,
        hflip=ranges.hflip if "hflip" in pieces else 0.0,
    )
