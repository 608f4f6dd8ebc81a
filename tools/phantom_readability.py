"""How well the real-difficulty phantom's pixels carry the drawn narrowing, at 64-pixel level crops.

It writes a phantom (default options but the seed, studies and base size), ingests its train split at 64
pixels, and prints per metric group the R² with which a cubic in a plain measurement at the labelled point
(`lumbar_fast.phantom.readability`) recovers the narrowing of the answer key. Target: R² >= 0.9 per group.

    python tools/phantom_readability.py [--studies 40] [--image-size 384] [--seed 1] [--keep DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from lumbar_fast.ingest import ingest
from lumbar_fast.phantom import PhantomOptions, generate
from lumbar_fast.phantom.answer_key import ANSWER_KEY_NAME
from lumbar_fast.phantom.readability import RADIUS_MM, crop_measurements, readability_table

CROP_SIZE = 64


def measure(folder: Path, studies: int, image_size: int, seed: int) -> str:
    """Synth, ingest and measure under `folder`; the table as Markdown."""
    data, cache = folder / "rsna", folder / "cache.zarr"
    generate(data, studies, 0, PhantomOptions(seed=seed, image_size=image_size), progress=False)
    ingest(data, cache, size=CROP_SIZE, progress=False)
    table = readability_table(crop_measurements(cache, data / ANSWER_KEY_NAME))
    lines = ["| group | radius (mm) | crops | narrowing sd | correlation | R² (cubic) |", "| --- " * 6 + "|"]
    lines += [f"| {group} | {RADIUS_MM[group]:.1f} | {int(row.crops)} | {row.narrowing_sd:.3f} | "
              f"{row.correlation:.3f} | {row.r_squared:.3f} |" for group, row in table.iterrows()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the phantom and cache here.")
    args = parser.parse_args()
    print(f"{args.studies} studies, base size {args.image_size}, seed {args.seed}, {CROP_SIZE}-pixel crops\n")
    if args.keep:
        print(measure(args.keep, args.studies, args.image_size, args.seed))
        return
    with tempfile.TemporaryDirectory(prefix="readability-") as tmp:
        print(measure(Path(tmp), args.studies, args.image_size, args.seed))


if __name__ == "__main__":
    main()
