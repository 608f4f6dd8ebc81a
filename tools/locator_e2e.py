"""Locator end to end: is a submission from located crops as good as one from the labelled crops?

synth (train + test split with its answer key) → ingest the train split → train one classifier and one
locator per sequence → on the test split: (a) oracle: ingest with the answer key's coordinates, predict,
score; (b) located: ingest the stacks only, `locate`, ingest with the located coordinates, predict, score.
Prints both scores, their ratio (target: located within 10 % of oracle) and the locator's point, slice and
level-name errors on the test studies against the answer key; writes them to `<out>/locator_e2e.json`.
Pass `--data`, `--classifiers DIR` and `--locators DIR` (folders holding one run per sequence, named after
it) to reuse what exists.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from demo import SEQUENCES, run

from lumbar_fast import metrics
from lumbar_fast.cache import open_cache
from lumbar_fast.commands.score import read_labels, read_submission
from lumbar_fast.locator.metrics import localisation_metrics


def score(labels_csv: Path, submission_csv: Path) -> float:
    """The competition score of a submission against train.csv-format labels."""
    labels, submission = read_labels(labels_csv), read_submission(submission_csv)
    return float(metrics.rsna_score(metrics.labels_to_rows(labels), submission)["score"])


def located_point_errors(oracle_cache: Path, located_cache: Path) -> dict[str, dict]:
    """Per sequence: the located crops' points against the answer key's (both caches hold the same stacks)."""
    oracle, located = open_cache(oracle_cache), open_cache(located_cache)
    return {seq: localisation_metrics(located.level_labels(seq), oracle.level_labels(seq),
                                      oracle.stack_index(seq))
            for seq in oracle.sequences()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("locator_e2e_out"))
    parser.add_argument("--data", type=Path, help="an existing phantom folder with a test split")
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--test-studies", type=int, default=80)
    parser.add_argument("--seed", type=int, default=3, help="phantom seed")
    parser.add_argument("--balanced", action="store_true",
                        help="equal class frequencies (default: the real class balance)")
    parser.add_argument("--off-centre", type=float, default=0.0,
                        help="rate of the phantom's off_centre pitfall (series not centred on the spine)")
    parser.add_argument("--size", type=int, default=128, help="cache image size")
    parser.add_argument("--classifiers", type=Path, help="folder of classifier runs, one per sequence")
    parser.add_argument("--locators", type=Path, help="folder of locator runs, one per sequence")
    parser.add_argument("--classifier-model", default="test_efficientnet")
    parser.add_argument("--sagittal-shift", type=float,
                        help="the sagittal classifiers' --shift (default: train's): wider shifts make their "
                             "40 mm crops less sensitive to the locator's few-mm error")
    parser.add_argument("--locator-model", default="mobilenetv3_small_100")
    parser.add_argument("--locator-epochs", type=int, default=12)
    parser.add_argument("--locator-series", type=int, default=60,
                        help="series per locator epoch (train-locator --limit-series), to bound its time")
    parser.add_argument("--locator-lr", type=float, default=2e-3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    start = time.perf_counter()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    data = args.data or out / "rsna"
    if args.data is None and not data.is_dir():
        run("synth", str(data), "--studies", str(args.studies), "--test-studies", str(args.test_studies),
            "--seed", str(args.seed), *(["--balanced"] if args.balanced else []), "--image-size", "256",
            "--pitfall", f"off_centre={args.off_centre}", "--quiet")
    cache = out / "train.zarr"
    if not cache.exists():
        run("ingest", str(data), "--out", str(cache), "--size", str(args.size), "--no-progress")
    classifiers = args.classifiers or out / "classifiers"
    locators = args.locators or out / "locators"
    for sequence in SEQUENCES:
        wide = args.sagittal_shift is not None and sequence != "ax_t2"
        shift = ["--shift", str(args.sagittal_shift)] if wide else []
        if not (classifiers / sequence / "best.pt").is_file():  # the default recipe
            run("train", "--sequence", sequence, "--cache", str(cache), "--run-dir",
                str(classifiers / sequence), "--model", args.classifier_model, "--no-pretrained", *shift,
                "--device", args.device, "--no-progress")
        if not (locators / sequence / "best.pt").is_file():
            run("train-locator", "--sequence", sequence, "--cache", str(cache), "--run-dir",
                str(locators / sequence), "--model", args.locator_model, "--no-pretrained", "--epochs",
                str(args.locator_epochs), "--lr", str(args.locator_lr), "--image-size", str(args.size),
                "--limit-series", str(args.locator_series), "--device", args.device, "--no-progress")
    key_labels, key_points = data / "test_labels.csv", data / "test_label_coordinates.csv"
    oracle_cache, stacks_cache = out / "test-oracle.zarr", out / "test-stacks.zarr"
    located_cache = out / "test-located.zarr"
    located_csv = out / "located_coordinates.csv"
    run("ingest", str(data), "--split", "test", "--out", str(oracle_cache), "--size", str(args.size),
        "--coordinates", str(key_points), "--labels", str(key_labels), "--no-progress")
    run("ingest", str(data), "--split", "test", "--out", str(stacks_cache), "--size", str(args.size),
        "--no-progress")
    run("locate", *(str(locators / s) for s in SEQUENCES), "--cache", str(stacks_cache), "--out",
        str(located_csv), "--device", args.device)
    shutil.rmtree(located_cache, ignore_errors=True)  # built from this run's located points, not an earlier's
    run("ingest", str(data), "--split", "test", "--out", str(located_cache), "--size", str(args.size),
        "--coordinates", str(located_csv), "--labels", str(key_labels), "--no-progress")
    runs = [str(classifiers / s) for s in SEQUENCES]
    scores = {}
    for name, test_cache in (("oracle", oracle_cache), ("located", located_cache)):
        submission = out / f"submission-{name}.csv"
        run("predict", *runs, "--cache", str(test_cache), "--out", str(submission), "--allow-prior",
            "--device", args.device)
        scores[name] = score(key_labels, submission)
    result = {"scores": scores, "ratio_located_to_oracle": scores["located"] / scores["oracle"],
              "locator_on_test": located_point_errors(oracle_cache, located_cache),
              "seconds": time.perf_counter() - start}
    (out / "locator_e2e.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"\nscore with labelled coordinates {scores['oracle']:.4f}, with located coordinates "
          f"{scores['located']:.4f}: ratio {result['ratio_located_to_oracle']:.3f} (target ≤ 1.10)")


if __name__ == "__main__":
    main()
