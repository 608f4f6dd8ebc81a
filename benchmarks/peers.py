"""The loaders a user would pick instead of ours, built the usual way, to benchmark side by side.

- the seed's way: a torch DataLoader whose Dataset reads and decodes the labelled DICOM with pydicom, windows
  it (min-max to 8 bits), resizes it to the crop size (224) and normalises it, on every epoch;
- the Kaggle-standard cache: one PNG per item, written once from the same items, read by a torch DataLoader
  with PIL, ToTensor and Normalize;
- MONAI, what a medical-imaging user reaches for: a CacheDataset that decodes every labelled DICOM once, with
  its deterministic transforms, into RAM (threads), read by MONAI's ThreadDataLoader (a dev/bench extra,
  not a dependency of the package) through the same PeerLoader.
All hand out our loaders' Batch (float32 NCHW images, labels, item indices), moved to the device in the main
process, so that the benchmarks and the training loop take any contender alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from benchmarks.decode import decode_and_resize
from lumbar_fast.loaders import IMAGENET_MEAN, IMAGENET_STD, Batch


def _to_normalised_tensor() -> transforms.Compose:
    """The peers' per-image transform: ToTensor (HWC uint8 → CHW float in [0, 1]), ImageNet Normalize."""
    return transforms.Compose([transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class SeedDicomDataset(Dataset):
    """Item i: DICOM `paths[i]` decoded, resized, replicated to 3 channels and normalised, every time."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray, size: int) -> None:
        self.paths, self.labels, self.size = [str(p) for p in paths], labels, size
        self.transform = _to_normalised_tensor()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        gray = decode_and_resize(self.paths[index], self.size)
        return self.transform(np.repeat(gray[:, :, None], 3, axis=2)), int(self.labels[index]), index


class PngDataset(Dataset):
    """Item i: PNG `paths[i]` read with PIL, then ToTensor and Normalize."""

    def __init__(self, paths: Sequence[Path], labels: np.ndarray) -> None:
        self.paths, self.labels = [str(p) for p in paths], labels
        self.transform = _to_normalised_tensor()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), int(self.labels[index]), index


def write_png_cache(images: np.ndarray, folder: Path) -> list[Path]:
    """One PNG per item of an (N, S, S, 3) uint8 array, written once (kept when the folder already has N)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{index:06d}.png" for index in range(len(images))]
    if not all(path.exists() for path in paths):
        for path, image in zip(paths, images, strict=True):
            Image.fromarray(image).save(path)
    return paths


def monai_cache_dataset(paths: Sequence[Path], labels: np.ndarray, size: int, workers: int) -> Dataset:
    """MONAI's CacheDataset over the labelled DICOMs: the seed's decode and resize, replicated to 3 channels
    and ImageNet-normalised (all deterministic, so all cached), run once per item by `workers` threads."""
    from monai.data import CacheDataset
    from monai.transforms import Compose, Lambda, Lambdad, NormalizeIntensityd, ToTensord

    mean, std = (np.asarray(v, np.float32)[:, None, None] for v in (IMAGENET_MEAN, IMAGENET_STD))
    transform = Compose([
        Lambdad("image", lambda path: np.repeat(decode_and_resize(path, size)[None], 3, axis=0)),
        ToTensord("image", dtype=torch.float32),
        Lambdad("image", lambda image: image / 255.0),
        NormalizeIntensityd("image", subtrahend=mean, divisor=std, channel_wise=False),
        Lambda(lambda item: (item["image"].as_tensor(), item["label"], item["index"])),  # the peers' items
    ])
    data = [{"image": str(path), "label": int(label), "index": index}
            for index, (path, label) in enumerate(zip(paths, labels, strict=True))]
    return CacheDataset(data, transform, cache_rate=1.0, num_workers=max(workers, 1), progress=False)


class PeerLoader:
    """A shuffling torch DataLoader (or a subclass: MONAI's ThreadDataLoader) over a peer Dataset, with our
    Loader's face (len, epoch, close).

    Batches leave the workers as float32 on the CPU, as the peers do, and are moved to `device` here.
    """

    def __init__(self, dataset: Dataset, batch_size: int, workers: int, device: torch.device,
                 seed: int = 0, loader_class: type[DataLoader] = DataLoader) -> None:
        self.device, self.seed = device, seed
        self.generator = torch.Generator()
        self.loader = loader_class(dataset, batch_size=batch_size, shuffle=True, drop_last=True,
                                   num_workers=workers, persistent_workers=workers > 0,
                                   pin_memory=device.type == "cuda", generator=self.generator)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """One shuffled pass: images and labels on the device, item indices on the CPU."""
        self.generator.manual_seed(self.seed + epoch)
        for images, labels, items in self.loader:
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            yield Batch(images, labels.to(self.device, non_blocking=True), items)

    def close(self) -> None:
        """Stop the persistent workers (dropping the DataLoader shuts its iterator down)."""
        self.loader = None
