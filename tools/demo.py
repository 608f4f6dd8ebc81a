"""`make demo`: the main job end to end on generated data, small enough for a 2-core CPU in a few minutes."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> None:
    """Run one lumbar-fast command, echoing it, and stop the demo if it fails."""
    print("\n$ lumbar-fast " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "lumbar_fast", *args], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    data = args.out / "rsna"
    run("synth", str(data), "--studies", "40", "--test-studies", "4", "--seed", "0")


if __name__ == "__main__":
    main()
