"""Training recipes: per-sequence defaults resolved from `auto`, the seed paper's recipe, augmentation pieces,
the canonical side of subarticular crops, and the learning tests of the default recipe under the real class
balance (docs/recipe.md has the study behind the defaults)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lumbar_fast import recipes, rsna
from lumbar_fast.cache import open_cache
from lumbar_fast.classifier.config import MONITORS, TrainConfig
from lumbar_fast.classifier.items import class_weight_tensor
from lumbar_fast.classifier.steps import make_optimizer, make_scheduler
from lumbar_fast.classifier.task import loader_config
from lumbar_fast.errors import LumbarFastError
from lumbar_fast.ingest import mirrored_to_canonical_side
from lumbar_fast.runfolder import RunFolder
from tests.learning import best_record, validation_gap

CPU = torch.device("cpu")


def config(sequence: str = "sag_t2", **changes) -> TrainConfig:
    return TrainConfig(sequence=sequence, cache="c.zarr", run_dir="run", **changes)


def test_label_smoothing_is_refused_outside_0_to_1():
    config("sag_t1", label_smoothing=0.1).check()
    for value in (-0.1, 1.0):
        with pytest.raises(LumbarFastError, match=f"--label-smoothing {value} is outside 0..1"):
            config("sag_t1", label_smoothing=value).check()


def test_auto_resolves_to_each_sequences_default_and_explicit_values_win():
    for sequence in rsna.SEQUENCES:
        resolved = config(sequence).resolved(3)
        default = recipes.DEFAULTS[sequence]
        assert (resolved.augment, resolved.class_weights, resolved.monitor, resolved.calibration) == \
            (default.augment, default.class_weights, default.monitor, default.calibration)
        assert resolved.recipe == "default"
        assert resolved.resolved(3) == resolved  # what config.json records resolves to itself
    chosen = config("ax_t2", augment="intensity, rotate", class_weights="inverse", monitor="loss",
                    calibration="none").resolved(3)
    assert (chosen.augment, chosen.class_weights, chosen.monitor, chosen.calibration) == \
        ("rotate,intensity", "inverse", "loss", "none")
    seeded = config(recipe="seed", class_weights="metric").resolved(3)  # an explicit value beats the recipe's
    assert (seeded.augment, seeded.class_weights, seeded.monitor) == ("none", "metric", "accuracy")


def test_no_default_flips_images_horizontally():
    """A sagittal flip mirrors anterior and posterior; an axial one undoes the crops' canonical side."""
    assert not any(recipes.flips_horizontally(recipe.augment) for recipe in recipes.DEFAULTS.values())


def test_the_seed_recipe_is_the_papers():
    """Unweighted cross-entropy, accuracy as the monitor, no augmentation, no calibration, on the level view;
    Adam at 1e-3, StepLR(2, 0.1), patience 3, 5 epochs."""
    seed = config(recipe="seed").resolved(3)
    assert (seed.augment, seed.class_weights, seed.monitor, seed.calibration) == \
        ("none", "none", "accuracy", "none")
    assert seed.view == "level"
    assert (seed.lr, seed.step_size, seed.gamma, seed.patience, seed.epochs) == (1e-3, 2, 0.1, 3, 5)
    assert loader_config(seed, CPU, None, 3).augment is None
    assert class_weight_tensor(seed.class_weights, np.array([0, 0, 1, 2]), CPU) is None
    assert MONITORS[seed.monitor] == ("val_accuracy", "max")
    optimizer = make_optimizer(nn.Linear(2, 3), seed, CPU)
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["lr"] == 1e-3
    scheduler = make_scheduler(optimizer, seed)
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR
    assert (scheduler.step_size, scheduler.gamma) == (2, 0.1)


def test_augmentation_pieces():
    assert recipes.normalise_augment("all") == ",".join(recipes.AUGMENTATIONS)
    assert recipes.normalise_augment(" intensity,shift ") == "shift,intensity"
    assert recipes.normalise_augment("none") == recipes.normalise_augment("") == "none"
    with pytest.raises(LumbarFastError, match="unknown augmentation 'wobble'"):
        recipes.normalise_augment("shift,wobble")
    with pytest.raises(LumbarFastError, match="unknown augmentation 'auto'"):
        recipes.augment_config("auto", 0.0625)  # a run resolves `auto` before its loaders are built
    assert recipes.augment_config("none", 0.0625) is None
    shift = recipes.augment_config("shift", 0.1)
    assert shift.shift == 0.1 and shift.rotate_deg == shift.scale == shift.brightness == shift.hflip == 0
    everything = recipes.augment_config("all", 0.0625)
    assert everything.hflip == 0.5 and everything.rotate_deg > 0 and everything.contrast > 0
    assert everything.vflip == everything.slice_flip == 0  # never part of a recipe


def test_a_recorded_augment_says_whether_the_run_flipped_horizontally():
    assert recipes.flips_horizontally("all") and not recipes.flips_horizontally("rotate,shift")


def test_train_refuses_an_unknown_recipe_or_augmentation_in_one_line(synth_cache, tmp_path, run_cli):
    base = ["train", "--sequence", "sag_t2", "--cache", synth_cache, "--run-dir", tmp_path / "run", "--model",
            "test_efficientnet", "--no-pretrained", "--device", "cpu"]
    for extra, message in ((["--augment", "shift,wobble"], "unknown augmentation 'wobble'"),
                           (["--recipe", "paper"], "--recipe")):
        code, _, err = run_cli(*base, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# -- the canonical side of subarticular crops ------------------------------------------------
def test_the_canonical_side_puts_the_midline_left_of_the_graded_recess():
    rows_to_patient_left = np.array([1.0, 0, 0, 0, 1, 0])  # the usual axial orientation
    rows_to_patient_right = np.array([-1.0, 0, 0, 0, 1, 0])
    assert not mirrored_to_canonical_side("left_subarticular_stenosis", rows_to_patient_left)
    assert mirrored_to_canonical_side("right_subarticular_stenosis", rows_to_patient_left)
    assert mirrored_to_canonical_side("left_subarticular_stenosis", rows_to_patient_right)
    assert not mirrored_to_canonical_side("right_subarticular_stenosis", rows_to_patient_right)
    for other in ("spinal_canal_stenosis", "left_neural_foraminal_narrowing",
                  "right_neural_foraminal_narrowing"):
        assert not mirrored_to_canonical_side(other, rows_to_patient_left)


def test_ingest_mirrors_the_right_subarticular_crops_only(make_cache, synth_data, synth_cache):
    canonical, plain = open_cache(synth_cache), open_cache(make_cache(synth_data, canonical_side=False))
    assert canonical.attrs["params"]["canonical_side"] and not plain.attrs["params"]["canonical_side"]
    for sequence in canonical.sequences():
        labels = canonical.level_labels(sequence)
        assert labels.equals(plain.level_labels(sequence))
        mirrored = (labels["condition"] == "right_subarticular_stenosis").to_numpy()  # phantom rows run to +x
        assert mirrored.any() == (sequence == "ax_t2")
        ours, theirs = canonical.level_images(sequence), plain.level_images(sequence)
        assert np.array_equal(ours[~mirrored], theirs[~mirrored])
        assert np.array_equal(ours[mirrored], theirs[mirrored][:, :, ::-1])


# -- learning under the real class balance, where the task is hard ------------------------------------------
@pytest.mark.parametrize("sequence", list(rsna.SEQUENCES))
def test_the_default_recipe_learns_every_sequence_under_the_real_class_balance(default_run_of,
                                                                               real_balance_data, sequence):
    """On the real-difficulty phantom, whose grades are a rater's noisy reading of a continuous narrowing, no
    model reaches a low loss: the default recipe's validation loss is judged between the training prior's and
    the best possible (the answer key's prediction for the same items). Measured 2026-12-04 (seed 5, 24-px
    crops): 87-92 % of that gap closed, 1.17-1.20x the best possible (86-90 %, 1.20-1.27x at 32 px)."""
    run_dir = default_run_of(sequence)
    recorded = RunFolder(run_dir).read_config()
    default = recipes.DEFAULTS[sequence]
    assert (recorded["augment"], recorded["class_weights"], recorded["monitor"], recorded["calibration"]) == \
        (default.augment, default.class_weights, default.monitor, default.calibration)  # resolved, not `auto`
    best = best_record(run_dir)
    gap = validation_gap(run_dir, real_balance_data)
    print(f"{sequence}: best epoch {best['epoch']}, weighted log loss {gap['model']:.3f} (prior "
          f"{gap['prior']:.3f}, best possible {gap['best']:.3f}): {gap['closed']:.0%} of the gap closed, "
          f"{gap['ratio']:.2f}x the best; balanced accuracy {best['val_balanced_accuracy']:.3f}, support "
          f"{best['val_support']}")
    assert min(best["val_support"]) >= 15
    assert gap["model"] == pytest.approx(best["val_weighted_log_loss"])
    assert gap["closed"] >= 0.7 and gap["ratio"] <= 1.45

