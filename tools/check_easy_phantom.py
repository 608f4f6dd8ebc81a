"""Check that `synth --difficulty easy` writes today's files byte for byte the phantom of an older commit.

It checks the commit out into a temporary `git worktree`, generates one small phantom with that code and one
with this tree's code at `--difficulty easy` (same seed and options), and compares every file byte for byte;
phantom_manifest.json is compared as JSON without the fields added since (options.difficulty). A frozen
digest would not do: the DICOM files embed the pydicom version.

    python tools/check_easy_phantom.py [--commit cd62905] [--studies 4] [--test-studies 1] [--image-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE_COMMIT = "cd62905"  # the last commit before the real-difficulty phantom (issue 23)
MANIFEST = "phantom_manifest.json"
#: manifest fields that the easy phantom gained since: (section, key)
NEW_MANIFEST_FIELDS = (("options", "difficulty"),)


def synth(code: Path, out: Path, args: list[str]) -> None:
    """Run `lumbar-fast synth` of the source tree `code` into `out`."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    subprocess.run([sys.executable, "-m", "lumbar_fast", "synth", str(out), *args], check=True, env=env,
                   cwd=code, stdout=subprocess.DEVNULL)


def files_of(root: Path) -> dict[str, Path]:
    """Every file under `root` by its relative path."""
    return {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}


def without_new_fields(manifest: dict) -> dict:
    """The manifest minus the fields the easy phantom gained since the base commit."""
    for section, key in NEW_MANIFEST_FIELDS:
        manifest.get(section, {}).pop(key, None)
    return manifest


def compare(old: Path, new: Path) -> list[str]:
    """Differences between two phantom folders (empty when identical but for the new manifest fields)."""
    old_files, new_files = files_of(old), files_of(new)
    problems = [f"only in the base commit's phantom: {n}" for n in sorted(set(old_files) - set(new_files))]
    problems += [f"only in this tree's phantom: {n}" for n in sorted(set(new_files) - set(old_files))]
    for name in sorted(set(old_files) & set(new_files)):
        if name == MANIFEST:
            same = json.loads(old_files[name].read_text()) == without_new_fields(
                json.loads(new_files[name].read_text()))
        else:
            same = old_files[name].read_bytes() == new_files[name].read_bytes()
        if not same:
            problems.append(f"differs: {name}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", default=BASE_COMMIT)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--test-studies", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    common = ["--studies", str(args.studies), "--test-studies", str(args.test_studies), "--image-size",
              str(args.image_size), "--seed", str(args.seed), "--workers", "1", "--quiet"]
    with tempfile.TemporaryDirectory(prefix="easy-phantom-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.commit],
                       check=True, capture_output=True)
        try:
            synth(base, Path(tmp) / "old", common)
            synth(REPO, Path(tmp) / "new", [*common, "--difficulty", "easy"])
            problems = compare(Path(tmp) / "old", Path(tmp) / "new")
            count = len(files_of(Path(tmp) / "old"))
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=True)
    for line in problems:
        print(line)
    print(f"{'FAIL' if problems else 'OK'}: {count} files of {args.commit}'s phantom against this tree's "
          f"--difficulty easy ({' '.join(common[:-3])}): {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
