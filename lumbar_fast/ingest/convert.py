"""Ingest's second stage, run by the worker processes: one series decoded into windowed, resized stack
images and its level crops, with their tables (a `SeriesPart`), compressed and committed as one part file
(a `PartFile`: a temporary name, then an atomic rename: a part is complete or absent). Any exception no
check foresaw becomes the series' error row."""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lumbar_fast import cache, dicom, rsna
from lumbar_fast.cache import IngestSettings
from lumbar_fast.errors import NOT_A_FAILURE, typed_line
from lumbar_fast.ingest.plan import LevelLabel, SeriesTask, error_row


@dataclass
class SeriesPart:
    """A converted series: its tables (stack_row local to this part) and its images."""

    task: SeriesTask
    stack_index: pd.DataFrame
    level_labels: pd.DataFrame
    errors: pd.DataFrame
    stack_images: np.ndarray  # (n, S, S) uint8
    level_images: np.ndarray  # (m, S, S, C) uint8


@dataclass
class PartFile:
    """What a part file holds: a SeriesPart with each image compressed to one zstd frame (cache.encode_items)
    here, in the worker, so that the single writer only joins frames into chunks."""

    task: SeriesTask
    stack_index: pd.DataFrame
    level_labels: pd.DataFrame
    errors: pd.DataFrame
    stack_frames: list[bytes]
    level_frames: list[bytes]

    @classmethod
    def of(cls, part: SeriesPart) -> PartFile:
        return cls(part.task, part.stack_index, part.level_labels, part.errors,
                   cache.encode_items(part.stack_images), cache.encode_items(part.level_images))


def convert_series(task: SeriesTask, params: IngestSettings) -> SeriesPart:
    """Decode one series into windowed, resized stack images and its level crops, with their tables; an
    exception no check foresaw becomes the series' error row, so that it cannot end the ingest."""
    try:
        return _convert(task, params)
    except NOT_A_FAILURE:
        raise
    except BaseException as exc:
        reason = f"series cannot be converted: {typed_line(exc)}"
        return _part(task, params, [], [], [error_row(task.study_id, task.series_id, task.folder, reason)],
                     [], [])


def _convert(task: SeriesTask, params: IngestSettings) -> SeriesPart:
    """convert_series without the safety net."""
    scan = dicom.read_series(task.folder)
    errors = [error_row(task.study_id, task.series_id, path, reason) for path, reason in scan.errors]
    if not scan.slices:
        reason = "empty series: no usable image" if scan.errors else "empty series: no .dcm files"
        errors.append(error_row(task.study_id, task.series_id, task.folder, reason))
    window = dicom.series_window(scan.slices) if scan.slices else (0.0, 1.0)
    originals = [[dicom.to_uint8(s.pixels, window) for s in stack.slices] for stack in scan.stacks]
    stack_images, index_rows = _stack_items(task, scan, originals, params.images.size)
    crops, level_rows = _level_items(task, scan, originals, params, errors)
    return _part(task, params, index_rows, level_rows, errors, stack_images, crops)


def _part(task: SeriesTask, params: IngestSettings, index_rows: list[dict], level_rows: list[dict],
          errors: list[dict], stack_images: list[np.ndarray], crops: list[np.ndarray]) -> SeriesPart:
    """A SeriesPart of typed tables and stacked images (empty arrays of the right shape when none)."""
    size, channels = params.images.size, params.images.channels
    return SeriesPart(
        task=task,
        stack_index=cache.typed_table(index_rows, cache.STACK_INDEX_COLUMNS),
        level_labels=cache.typed_table(level_rows, cache.LEVEL_LABEL_COLUMNS),
        errors=cache.typed_table(errors, cache.ERROR_COLUMNS),
        stack_images=np.stack(stack_images) if stack_images else np.zeros((0, size, size), np.uint8),
        level_images=np.stack(crops) if crops else np.zeros((0, size, size, channels), np.uint8),
    )


def _stack_items(task: SeriesTask, scan: dicom.SeriesScan, originals: list[list[np.ndarray]],
                 size: int) -> tuple[list[np.ndarray], list[dict]]:
    """Every slice of the series resized to size×size, stack by stack, with its index row."""
    images, rows = [], []
    for stack_id, (stack, windowed) in enumerate(zip(scan.stacks, originals, strict=True)):
        for slice_id, (item, image) in enumerate(zip(stack.slices, windowed, strict=True)):
            images.append(dicom.resize(image, size))
            rows.append({
                "study_id": task.study_id, "series_id": task.series_id, "stack": stack_id, "slice": slice_id,
                "instance_number": item.instance_number, "position": item.location,
                "rows": image.shape[0], "cols": image.shape[1],
                "spacing_row": item.spacing[0], "spacing_col": item.spacing[1],
            })
    return images, rows


def _level_items(task: SeriesTask, scan: dicom.SeriesScan, originals: list[list[np.ndarray]],
                 params: IngestSettings, errors: list[dict]) -> tuple[list[np.ndarray], list[dict]]:
    """The 2.5D crop of every label of the series with its label row; a label whose instance is not
    among the usable slices becomes an error row."""
    crops, rows = [], []
    stack_start = np.cumsum([0] + [len(stack.slices) for stack in scan.stacks])
    for label in task.labels:
        found = scan.find_instance(label.instance_number)
        problem = (f"labelled instance missing or unusable: {label.condition} {label.level}" if found is None
                   else _outside(label, originals[found[0]][found[1]].shape))
        if problem:
            path = task.folder / f"{label.instance_number}.dcm"
            errors.append(error_row(task.study_id, task.series_id, path, problem))
            continue
        stack_id, slice_id = found
        labelled = scan.stacks[stack_id].slices[slice_id]
        images = params.images
        crop = dicom.level_crop(originals[stack_id], slice_id, label.x, label.y, labelled.spacing,
                                images.crop_mm[task.sequence], images.size, images.channels)
        if images.canonical_side and mirrored_to_canonical_side(label.condition, labelled.orientation):
            crop = np.ascontiguousarray(crop[:, ::-1])
        crops.append(crop)
        rows.append({
            "study_id": task.study_id, "series_id": task.series_id, "condition": label.condition,
            "level": label.level, "severity": label.severity, "stack": stack_id, "slice": slice_id,
            "instance_number": label.instance_number, "x": label.x, "y": label.y,
            "stack_row": int(stack_start[stack_id] + slice_id),
        })
    return crops, rows


def _outside(label: LevelLabel, shape: tuple[int, ...]) -> str | None:
    """Why a labelled point lies outside its image of `shape` (rows, cols), or None when it lies inside."""
    rows, cols = shape[:2]
    if 0 <= label.x < cols and 0 <= label.y < rows:
        return None
    return (f"labelled point outside its image: {label.condition} {label.level} at x={label.x:g} "
            f"y={label.y:g} in {cols}×{rows} pixels")


def mirrored_to_canonical_side(condition: str, orientation: np.ndarray) -> bool:
    """Whether a crop of `condition` on a slice of ImageOrientationPatient `orientation` is mirrored left to
    right so that the patient's midline lies to the image's left of the crop centre.

    A subarticular crop holds both recesses, which carry independent labels: in canonical side the graded
    one is always the right-hand recess of the image, whatever side it is and however the rows run (the
    patient's left is +x, so a row cosine with positive x runs towards the patient's left).
    """
    if rsna.CONDITION_GROUP[condition] != "subarticular":
        return False
    medial_is_plus_x = condition.startswith("right_")  # the midline lies towards the patient's left
    rows_run_plus_x = float(orientation[0]) >= 0.0
    return medial_is_plus_x == rows_run_plus_x


def commit_part(task: SeriesTask, params: IngestSettings, parts: Path) -> int:
    """Convert one series and commit it as a part file (temporary name, then an atomic rename); returns
    its slice count."""
    part = PartFile.of(convert_series(task, params))
    target = parts / task.part_name
    partial_file = target.with_suffix(f".{os.getpid()}.tmp")
    with open(partial_file, "wb") as handle:
        pickle.dump(part, handle, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(partial_file, target)
    return len(part.stack_frames)
