"""The real-difficulty phantom's calibration: the best possible value of each competition term against the
6th-place RSNA 2024 single model's CV terms (the anchors), at the real class balance.

Numeric, no pixels: it draws the latents of many studies from `lumbar_fast.phantom.grading` (the model
`synth` uses), takes the best prediction q ∝ (1, 2, 4)·p(grade | latent) and averages the competition losses
over labels redrawn from p. The target is 0.8-1.0 × each anchor (aim 0.9); the table is in docs/phantom.md.

    python tools/calibrate_phantom.py [--studies 20000] [--draws 5] [--seed 0]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import numpy as np

from lumbar_fast import rsna
from lumbar_fast.metrics import metric_optimal
from lumbar_fast.phantom import grading
from lumbar_fast.phantom.answer_key import TERMS, expected_losses
from lumbar_fast.phantom.options import REAL_FREQUENCIES

#: 6th place RSNA 2024, best single model, cross-validation (DESIGN.md section 7)
ANCHORS: dict[str, float] = {"spinal": 0.268, "foraminal": 0.486, "subarticular": 0.562,
                             "any_severe_spinal": 0.261}


def best_and_prior(n_studies: int, draws: int, seed: int) -> tuple[dict[str, float], dict[str, float]]:
    """Expected losses of the best prediction and of the constant class frequencies, on drawn studies."""
    study, conditions, p = grading.simulate(np.random.default_rng(seed), n_studies, REAL_FREQUENCIES)
    labelled = np.ones(len(study), dtype=bool)
    prior = np.array([REAL_FREQUENCIES[rsna.CONDITION_GROUP[c]] for c in conditions])
    best = expected_losses(study, conditions, labelled, p, metric_optimal(p), draws, seed + 1)
    return best, expected_losses(study, conditions, labelled, p, prior, draws, seed + 1)


def independent_levels_any_severe(n_studies: int, draws: int, seed: int) -> float:
    """The any_severe_spinal term's best possible value had the spinal levels no patient factor."""
    saved = grading.NOISE["spinal"]
    grading.NOISE["spinal"] = replace(saved, loading=0.0)
    try:
        return best_and_prior(n_studies, draws, seed)[0]["any_severe_spinal"]
    finally:
        grading.NOISE["spinal"] = saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=20000)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    best, prior = best_and_prior(args.studies, args.draws, args.seed)
    print(f"{args.studies} studies, {args.draws} label draws each, seed {args.seed}\n")
    print("| term | anchor (6th place single model, CV) | best possible (expected) | best / anchor | prior |")
    print("| --- | --- | --- | --- | --- |")
    for term in TERMS:
        print(f"| {term} | {ANCHORS[term]:.3f} | {best[term]:.3f} | {best[term] / ANCHORS[term]:.2f} "
              f"| {prior[term]:.3f} |")
    anchor_score = float(np.mean(list(ANCHORS.values())))
    print(f"| score | {anchor_score:.3f} | {best['score']:.3f} | {best['score'] / anchor_score:.2f} "
          f"| {prior['score']:.3f} |")
    print(f"\nany_severe_spinal with independent spinal levels (loading 0): "
          f"{independent_levels_any_severe(args.studies, args.draws, args.seed):.3f}")


if __name__ == "__main__":
    main()
