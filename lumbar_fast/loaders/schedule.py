"""Which items each rank sees in each batch of an epoch: the order shared by both loaders.

Training: one permutation per (seed, epoch); rank r of w takes its own disjoint, equal share of full batches,
and the fewer than w × batch items left over are dropped (different ones each epoch). Validation: every item
exactly once across the ranks, in order, each rank a contiguous block, the last batch possibly smaller.
Numpy only: DALI worker processes import this module.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from lumbar_fast.errors import LumbarFastError


@functools.lru_cache(maxsize=2)
def _permutation(n_items: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's shuffled item order (cached: each worker asks once per batch)."""
    order = np.random.default_rng([seed, epoch]).permutation(n_items)
    order.flags.writeable = False
    return order


@dataclass(frozen=True)
class EpochPlan:
    """The batches of one rank: item indices into the loader's item list, per epoch."""

    n_items: int
    batch_size: int
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    train: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise LumbarFastError(f"batch size must be at least 1, got {self.batch_size}")
        if not 0 <= self.rank < self.world_size:
            raise LumbarFastError(f"rank {self.rank} is outside a world of size {self.world_size}")
        if self.n_items < 1:
            raise LumbarFastError("the loader has no items")
        if self.train and self.n_items < self.world_size * self.batch_size:
            raise LumbarFastError(
                f"{self.n_items} training items are fewer than one batch per rank "
                f"({self.world_size} × {self.batch_size}); lower the batch size"
            )

    def __len__(self) -> int:
        """Batches per epoch for this rank."""
        if self.train:
            return self.n_items // (self.world_size * self.batch_size)
        return -(-len(self._validation_share()) // self.batch_size)

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Item indices (int64) of batch `index` of `epoch`; IndexError past the end of the epoch."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} of an epoch of {len(self)}")
        if self.train:
            per_rank = len(self) * self.batch_size
            start = self.rank * per_rank + index * self.batch_size
            order = _permutation(self.n_items, self.seed, epoch)
            return order[start:start + self.batch_size].astype(np.int64)
        return self._validation_share()[index * self.batch_size:(index + 1) * self.batch_size]

    def _validation_share(self) -> np.ndarray:
        """This rank's contiguous block of item indices (blocks differ in size by at most one)."""
        return np.array_split(np.arange(self.n_items, dtype=np.int64), self.world_size)[self.rank]
