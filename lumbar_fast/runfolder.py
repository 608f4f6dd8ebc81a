"""The run folder of one training run: config, split, per-epoch metrics, curves, predictions, checkpoints.

Every file is written atomically (a temporary file, then `os.replace`), so a run killed at any moment leaves
either the previous or the new version of each file, never a torn one; `--resume` relies on that.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lumbar_fast import __version__
from lumbar_fast.errors import LumbarFastError, first_line

if TYPE_CHECKING:  # torch is imported where a checkpoint is read or written: split.py stays torch-free
    import torch

CONFIG = "config.json"
SPLIT = "split.csv"
METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
CURVES = "curves.png"
PREDICTIONS = "val_predictions.csv"
BEST = "best.pt"
LAST = "last.pt"
#: curves.png panels: title -> (record key, legend label, line style) of each line; baselines dashed
Panels = dict[str, tuple[tuple[str, str, str], ...]]
#: bumped when a checkpoint's keys change, so that an old run is refused with a clear message
CHECKPOINT_FORMAT = 1


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary file beside `path`, then rename it over `path` in one step."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def environment() -> dict[str, str]:
    """Versions and git commit recorded in config.json, so a run can be traced to the code that made it."""
    import torch

    versions = {"lumbar_fast": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "numpy", "nvidia.dali"):
        try:
            versions[name] = __import__(name, fromlist=["__version__"]).__version__
        except ImportError:
            versions[name] = "missing"
    versions["git_commit"] = _git_commit()
    return versions


def _git_commit() -> str:
    """The commit of the source tree this package runs from, or "unknown" outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


#: after an epoch, curves.png is drawn again only when this many seconds have passed since it was last drawn
#: (a drawing costs the training process ~0.3 s of CPU: every epoch of a long run, not every epoch of a short
#: one), and always when the run ends
CURVES_INTERVAL_S = 30.0


class RunFolder:
    """One run's folder; rank 0 alone writes it (multi-GPU ranks only read)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._curves_drawn = time.monotonic()  # as if just drawn: a run of short epochs draws at its end

    @classmethod
    def create(cls, path: Path) -> RunFolder:
        """A new run folder (made at its first write, so a run refused early leaves nothing behind); an
        existing non-empty one is refused, so that no run is ever overwritten."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise LumbarFastError(f"run folder {path} already exists and is not empty; use --resume {path} "
                                  "to continue it, or choose another --run-dir")
        return cls(path)

    @classmethod
    def open_existing(cls, path: Path) -> RunFolder:
        """An existing run folder with a config and a last checkpoint, for --resume and inference."""
        folder = cls(Path(path))
        if not (folder.path / CONFIG).is_file():
            raise LumbarFastError(f"{path} is not a run folder (no {CONFIG})")
        return folder

    def file(self, name: str) -> Path:
        """The path of one of the run's files."""
        return self.path / name

    # -- config and split ------------------------------------------------
    def write_config(self, config: dict[str, Any], cache_settings: dict[str, Any] | None = None) -> None:
        """config.json: the run's arguments, the settings of the cache it trains on
        (`cache.ImageSettings.record()`, when given), versions and git commit."""
        settings = {} if cache_settings is None else {"cache_settings": cache_settings}
        text = json.dumps({"arguments": config, **settings, "environment": environment()}, indent=2,
                          default=str)
        atomic_write(self.file(CONFIG), lambda tmp: tmp.write_text(text + "\n"))

    def read_config(self) -> dict[str, Any]:
        """The arguments stored in config.json."""
        return self._config_document()["arguments"]

    def read_cache_settings(self) -> dict[str, Any]:
        """The settings of the cache the run trained on, as config.json records them; a run from before they
        were recorded is a one-line error."""
        settings = self._config_document().get("cache_settings")
        if settings is None:
            raise LumbarFastError(f"{self.path} records no settings of its training cache: it was trained by "
                                  "an earlier lumbar-fast; train it again (docs/CHANGELOG.md)")
        return settings

    def _config_document(self) -> dict[str, Any]:
        """config.json as written by `write_config`; a one-line error for one damaged or edited by hand."""
        path = self.file(CONFIG)
        try:
            document = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LumbarFastError(f"cannot read {path}: {first_line(exc)}") from None
        if not isinstance(document, dict) or not isinstance(document.get("arguments"), dict):
            raise LumbarFastError(f"{path} is damaged: it holds no object with the run's \"arguments\"")
        return document

    def write_table(self, name: str, table: pd.DataFrame) -> None:
        """A CSV file of the run (split.csv, val_predictions.csv)."""
        atomic_write(self.file(name), lambda tmp: table.to_csv(tmp, index=False))

    # -- metrics ------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        """The per-epoch records written so far, in epoch order."""
        path = self.file(METRICS_JSONL)
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_metrics(self, records: list[dict[str, Any]], panels: Panels, final: bool = True) -> None:
        """metrics.jsonl (one record per epoch), metrics.csv (the same, flattened) and curves.png: always when
        `final`, else when CURVES_INTERVAL_S have passed since this folder last drew it."""
        lines = "".join(json.dumps(record) + "\n" for record in records)
        atomic_write(self.file(METRICS_JSONL), lambda tmp: tmp.write_text(lines))
        self.write_table(METRICS_CSV, pd.json_normalize([_flatten_lists(r) for r in records]))
        if final or time.monotonic() - self._curves_drawn >= CURVES_INTERVAL_S:
            from lumbar_fast.plots import plot_curves  # matplotlib, imported when a run draws its curves

            atomic_write(self.file(CURVES), lambda tmp: plot_curves(records, tmp, panels))
            self._curves_drawn = time.monotonic()

    # -- checkpoints ------------------------------------------------
    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        """best.pt / last.pt, written atomically."""
        import torch

        state = {"format": CHECKPOINT_FORMAT, **state}
        atomic_write(self.file(name), lambda tmp: torch.save(state, tmp))

    def load_checkpoint(self, name: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        """A checkpoint of this run; a missing, unreadable or foreign one is a one-line error."""
        import torch

        path = self.file(name)
        if not path.is_file():
            raise LumbarFastError(f"{path} does not exist: the run has no finished epoch to continue from")
        try:
            state = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as exc:  # torch raises many types for a corrupt or foreign file
            raise LumbarFastError(f"cannot read checkpoint {path}: {first_line(exc)}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise LumbarFastError(f"{path} is not a lumbar-fast checkpoint of format {CHECKPOINT_FORMAT}")
        return state


def _flatten_lists(record: dict[str, Any]) -> dict[str, Any]:
    """Spread list values (per-class recall, confusion rows) into numbered columns for the CSV."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, list):
            for i, item in enumerate(value):
                flat.update(_flatten_lists({f"{key}_{i}": item}))
        else:
            flat[key] = value
    return flat
