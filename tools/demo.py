"""`make demo`: the main job end to end on generated data, small enough for a 2-core CPU in a few minutes.

synth (phantom RSNA folder) → ingest (cache) → info → train one model per sequence → evaluate (report table).
It trains the default recipe on a phantom with the real class balance, shrinking only what sets its time: a
tiny timm model from random weights, 64-pixel images, 300 studies (so that a validation fold holds at least
10 items of every class); the real defaults (tf_efficientnetv2_s, 224, ImageNet weights) stay for real use.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

SEQUENCES = ("sag_t1", "sag_t2", "ax_t2")


def run(*args: str) -> None:
    """Run one lumbar-fast command, echoing it, and stop the demo if it fails."""
    print("\n$ lumbar-fast " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lumbar_fast", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    start = time.perf_counter()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data, cache, runs = args.out / "rsna", args.out / "cache.zarr", args.out / "runs"
    run("synth", str(data), "--studies", str(args.studies), "--test-studies", "4", "--seed", "0",
        "--image-size", "128", "--quiet")
    run("ingest", str(data), "--out", str(cache), "--size", str(args.size), "--no-progress")
    run("info", str(cache))
    for sequence in SEQUENCES:
        run("train", "--sequence", sequence, "--cache", str(cache), "--run-dir", str(runs / sequence),
            "--model", "test_efficientnet", "--no-pretrained", "--no-progress")
    run("evaluate", *(str(runs / s) for s in SEQUENCES), "--out", str(args.out / "report"),
        "--bootstrap", "200")
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s; report: {args.out / 'report'}/report.md")


if __name__ == "__main__":
    main()
