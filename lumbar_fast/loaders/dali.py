"""The DALI loader: uint8 batches from spawned worker processes, augmented and normalised by DALI operators.

On CUDA the images go to the GPU as uint8 (`.gpu()`), are warped there with per-item matrices, and
`crop_mirror_normalize` writes float16 NHWC, which torch views as channels_last NCHW. Without a GPU the same
graph runs on DALI's CPU operators (`device_id=None`) in float32 (float16 is ~2.5× slower on CPU).
Workers start with `spawn` before the pipeline is built, so no CUDA state is ever forked into them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline
from nvidia.dali.plugin.pytorch import feed_ndarray

from lumbar_fast.loaders import Batch, LoaderConfig, normalisation_stats
from lumbar_fast.loaders.schedule import EpochPlan
from lumbar_fast.loaders.source import BatchSource
from lumbar_fast.npy import item_shape


def _pinned_device(device: torch.device) -> torch.device:
    """`device` with its GPU index made explicit, so that DALI and torch use the same GPU: a bare "cuda" is
    torch's current device (0 until this process initialises CUDA, e.g. set_device under torchrun)."""
    if device.type != "cuda" or device.index is not None:
        return device
    return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_initialized() else 0)


class DaliLoader:
    """Batches of (rows[i], labels[i]) items from a uint8 .npy through a DALI pipeline; see build_loader."""

    def __init__(self, images_path: str | Path, rows: np.ndarray, labels: np.ndarray, cfg: LoaderConfig,
                 train: bool) -> None:
        self._cfg = cfg
        self._device = _pinned_device(torch.device(cfg.device))
        self._cuda = self._device.type == "cuda"
        self._dtype = cfg.dtype or (torch.float16 if self._cuda else torch.float32)
        self._plan = EpochPlan(len(rows), cfg.batch_size, cfg.seed, cfg.rank, cfg.world_size, train)
        channels = item_shape(images_path)[-1]
        mean, std = normalisation_stats(cfg, channels)
        self._source = BatchSource(str(images_path), rows, labels, self._plan, mean, std,
                                   cfg.augment if train else None)
        self._pipe: Pipeline | None = None
        self._next_epoch: int | None = None
        self._start(0)

    def __len__(self) -> int:
        return len(self._plan)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of `epoch`. The pipeline restarts (a few seconds) only when a training epoch is not the
        one after the last, or the last was abandoned; validation epochs do not depend on the epoch number."""
        if self._next_epoch is None or (self._plan.train and self._next_epoch != epoch):
            self._start(epoch)
        self._next_epoch = None  # mid-epoch: an abandoned epoch forces a restart
        stream = torch.cuda.current_stream(self._device) if self._cuda else None
        while True:
            try:
                outputs = self._pipe.run(stream)
            except StopIteration:
                break
            yield self._to_torch(outputs, stream)
        self._pipe.reset()
        self._next_epoch = epoch + 1

    def close(self) -> None:
        """Stop the pipeline and its worker processes."""
        self._pipe = None
        self._next_epoch = None

    def _start(self, epoch: int) -> None:
        """Build a pipeline whose first epoch is `epoch`, starting its workers before any CUDA work."""
        self.close()
        self._source.start_epoch = epoch
        pipe = Pipeline(
            batch_size=self._cfg.batch_size,
            num_threads=max(1, self._cfg.workers),
            device_id=self._device.index if self._cuda else None,
            prefetch_queue_depth=self._cfg.prefetch,
            py_num_workers=max(1, self._cfg.workers),
            py_start_method="spawn",
        )
        with pipe:
            pipe.set_outputs(*self._graph())
        pipe.start_py_workers()
        pipe.build()
        self._pipe = pipe
        self._next_epoch = epoch

    def _graph(self) -> tuple:
        """Source → (GPU) → warp (training) → normalise to HWC float: images, labels, items."""
        images, labels, items, mean, std, *matrix = fn.external_source(
            source=self._source, num_outputs=self._source.num_outputs, parallel=True, batch=True,
            batch_info=True, prefetch_queue_depth=max(2, self._cfg.workers), layout=["HWC"],
        )
        if self._cuda:
            images = images.gpu()
        if matrix:
            images = fn.warp_affine(images, matrix=matrix[0], fill_value=0, interp_type=types.INTERP_LINEAR)
        images = fn.crop_mirror_normalize(
            images, mean=mean, std=std, output_layout="HWC",
            dtype=types.FLOAT16 if self._dtype in (torch.float16, torch.bfloat16) else types.FLOAT,
        )
        return images, labels, items

    def _to_torch(self, outputs: tuple, stream: torch.cuda.Stream | None) -> Batch:
        """DALI's outputs as torch tensors: images viewed as channels_last NCHW, in the loader's dtype."""
        images, labels, items = outputs
        dali_images = images.as_tensor()
        dtype = torch.float16 if dali_images.dtype == types.FLOAT16 else torch.float32
        nhwc = torch.empty(dali_images.shape(), dtype=dtype, device=self._device)
        feed_ndarray(dali_images, nhwc, cuda_stream=stream)
        nchw = nhwc.permute(0, 3, 1, 2).to(self._dtype)
        return Batch(nchw, torch.from_numpy(labels.as_array().copy()).to(self._device, non_blocking=True),
                     torch.from_numpy(items.as_array().copy()))
