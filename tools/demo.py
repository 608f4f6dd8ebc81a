"""`make demo`: the main job end to end on generated data, small enough for a 2-core CPU in three minutes.

synth (phantom RSNA folder) → ingest (cache) → info → train one model per sequence → evaluate (report table).
It trains the default recipe on the default phantom (real difficulty, the real class balance), shrinking only
what sets its time: a tiny timm model from random weights, 32-pixel crops, 300 studies, validated on a third
of them (so that every class has at least 20 validation items: sag_t2's severe class, the rarest); the real
defaults (tf_efficientnetv2_s, 224, ImageNet weights) stay for real use. The commands run in this one process
(as `lumbar-fast …` would run them), so that torch is imported once.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from lumbar_fast.cli import main as lumbar_fast

SEQUENCES = ("sag_t1", "sag_t2", "ax_t2")


def run(*args: str) -> float:
    """Run one lumbar-fast command, echoing it, and stop the demo if it fails; its seconds."""
    print("\n$ lumbar-fast " + " ".join(args), flush=True)
    start = time.perf_counter()
    try:
        lumbar_fast(list(args))
    except SystemExit as exc:
        if exc.code:
            sys.exit(exc.code)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    start = time.perf_counter()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data, cache, runs = args.out / "rsna", args.out / "cache.zarr", args.out / "runs"
    seconds = {"synth": run("synth", str(data), "--studies", str(args.studies), "--test-studies", "4",
                            "--seed", "0", "--image-size", "128", "--quiet")}
    seconds["ingest"] = run("ingest", str(data), "--out", str(cache), "--size", str(args.size),
                            "--no-progress")
    run("info", str(cache))
    # validation on a third (--folds 3): with the rater's noise, fold 0 of 5 held 12 severe spinal items
    seconds["train"] = sum(run("train", "--sequence", sequence, "--cache", str(cache), "--run-dir",
                               str(runs / sequence), "--folds", "3", "--model", "test_efficientnet",
                               "--no-pretrained", "--no-progress") for sequence in SEQUENCES)
    report = args.out / "report"
    seconds["evaluate"] = run("evaluate", *(str(runs / s) for s in SEQUENCES), "--out", str(report),
                              "--bootstrap", "200")
    stages = ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
    print(f"\ndemo finished in {time.perf_counter() - start:.0f} s ({stages}); "
          f"report: {report}/report.md")

if __name__ == "__main__":
    main()
