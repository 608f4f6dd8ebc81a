"""The stateless batch callable run by DALI's worker processes: item indices → one contiguous uint8 batch.

Picklable and light (numpy only), because DALI's workers start with `spawn` and unpickle it: it carries the
array's path, not the array, and memory-maps the .npy lazily, once per worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from lumbar_fast.loaders.augment import AugmentConfig, augment_params, identity_params, normalisation
from lumbar_fast.loaders.schedule import EpochPlan


@dataclass
class BatchSource:
    """`source(batch_info)` → images (B,S,S,C) uint8, labels, items, mean (B,C), std (B,C), [matrices].

    The epoch is `start_epoch + batch_info.epoch_idx` (DALI counts its resets from 0). `mean`/`std` are per
    item, with the intensity augmentation folded in, for `crop_mirror_normalize`; the (B,2,3) matrices come
    only when augmenting. Raises StopIteration past the epoch's last batch, which ends DALI's epoch.
    """

    images_path: str
    rows: np.ndarray
    labels: np.ndarray
    plan: EpochPlan
    mean: np.ndarray  # (C,) uint8 units
    std: np.ndarray
    augment: AugmentConfig | None
    start_epoch: int = 0
    _images: np.ndarray | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        """Pickle without the memory map: each worker opens its own."""
        return {**self.__dict__, "_images": None}

    def __call__(self, batch_info) -> tuple[np.ndarray, ...]:
        epoch = self.start_epoch + batch_info.epoch_idx
        try:
            items = self.plan.batch(epoch, batch_info.iteration)
        except IndexError:
            raise StopIteration from None
        if self._images is None:
            self._images = np.load(self.images_path, mmap_mode="r")
        images = self._images[self.rows[items]]  # fancy indexing: a fresh contiguous array
        size = images.shape[1]
        if self.augment is None:
            params = identity_params(len(items))
        else:
            params = augment_params(self.augment, self.plan.seed, epoch, items, size)
            images[params.slice_flip] = images[params.slice_flip, ..., ::-1]
        scale, shift = normalisation(params, self.mean, self.std)
        # crop_mirror_normalize's (x - mean) / std = scale·x + shift: mean = -shift/scale, std = 1/scale
        outputs = (images, self.labels[items], items, -shift / scale, 1.0 / scale)
        return outputs if self.augment is None else (*outputs, params.matrix)

    @property
    def num_outputs(self) -> int:
        """How many arrays each call returns."""
        return 5 if self.augment is None else 6
