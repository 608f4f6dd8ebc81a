"""The real-difficulty phantom's truth: a latent severity per (condition, level), a rater's noisy grade of it.

Each study draws one patient factor u ~ N(0, 1); each label's latent is z = m[level] + a·u + √(1 − a²)·e
(e ~ N(0, 1) per label, `a` the group's loading), so z ~ N(m[level], 1) and the levels of one patient
degenerate together. The pixels show a narrowing that is a monotone function of z (`narrowing`). The rater
first decides whether the level is narrowed at all, z + s₁·ε₁ ≥ t₁, and if so whether severely,
z + s₂·ε₂ ≥ t₂ (ε independent N(0, 1)), so p(grade | z) is known exactly (`grade_probabilities`); the
thresholds t₁ < t₂ are solved so that the grades follow the asked class frequencies of each group.
docs/phantom.md has the numbers; tools/calibrate_phantom.py chose them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from lumbar_fast import rsna

#: largest narrowing the pixels show (the renderer shows 0..0.85 well)
NARROWING_MAX = 0.85
#: latent mean per level, L1/L2 first: the real data's higher prevalence at the lower levels
LEVEL_EFFECT: tuple[float, ...] = (-0.45, -0.2, 0.1, 0.4, 0.15)
_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(80)  # ∫ f(z) N(z; 0, 1) dz ≈ Σ w f(node)


@dataclass(frozen=True)
class GroupNoise:
    """One metric group's model: the patient factor's loading and the rater's spread per threshold."""

    loading: float  # a latent's correlation with the patient factor; between two labels its square
    spread_any: float  # s₁: rater error on the Normal/Mild vs Moderate-or-worse decision (latent units)
    spread_severe: float  # s₂: rater error on the Moderate vs Severe decision


#: the calibrated model per metric group (tools/calibrate_phantom.py, docs/phantom.md)
NOISE: dict[str, GroupNoise] = {
    "spinal": GroupNoise(loading=0.88, spread_any=0.28, spread_severe=0.42),
    "foraminal": GroupNoise(loading=0.6, spread_any=0.49, spread_severe=0.735),
    "subarticular": GroupNoise(loading=0.6, spread_any=0.44, spread_severe=0.66),
}


def normal_cdf(x: np.ndarray | float) -> np.ndarray:
    """Φ(x), element-wise, from math.erf (no scipy)."""
    erf = np.frompyfunc(math.erf, 1, 1)
    return 0.5 * (1.0 + np.asarray(erf(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)), dtype=np.float64))


def grade_probabilities(latent: np.ndarray | float, thresholds: tuple[float, float],
                        noise: GroupNoise) -> np.ndarray:
    """p(grade | latent), (..., 3) in Normal/Mild, Moderate, Severe order, under the sequential rater."""
    z = np.asarray(latent, dtype=np.float64)
    p_normal = normal_cdf((thresholds[0] - z) / noise.spread_any)
    p_severe = (1.0 - p_normal) * normal_cdf((z - thresholds[1]) / noise.spread_severe)
    return np.stack([p_normal, 1.0 - p_normal - p_severe, p_severe], axis=-1)


def _class_frequencies(thresholds: tuple[float, float], noise: GroupNoise) -> np.ndarray:
    """The grade frequencies over all levels that `thresholds` give: p(grade | z) averaged over z."""
    z = (np.asarray(LEVEL_EFFECT)[:, None] + _NODES[None, :]).ravel()
    weights = np.tile(_WEIGHTS / _WEIGHTS.sum(), len(LEVEL_EFFECT)) / len(LEVEL_EFFECT)
    return weights @ grade_probabilities(z, thresholds, noise)


@lru_cache(maxsize=64)
def thresholds_for(frequencies: tuple[float, float, float], noise: GroupNoise) -> tuple[float, float]:
    """(t₁, t₂) whose grade frequencies are `frequencies` (bisection; each frequency is monotone in its t)."""
    t1 = _bisect(lambda t: _class_frequencies((t, t + 50.0), noise)[0] - frequencies[0])
    t2 = _bisect(lambda t: frequencies[2] - _class_frequencies((t1, t), noise)[2])
    return t1, t2


def _bisect(increasing, low: float = -10.0, high: float = 10.0, steps: int = 60) -> float:
    """The root of an increasing function on [low, high]."""
    for _ in range(steps):
        mid = (low + high) / 2
        low, high = (mid, high) if increasing(mid) < 0 else (low, mid)
    return (low + high) / 2


def narrowing(latent: np.ndarray | float, thresholds: tuple[float, float], signal: float = 1.0) -> np.ndarray:
    """The narrowing the pixels show: NARROWING_MAX·Φ((z − centre)/width), centred between the thresholds
    and as wide as their gap (so t₁ shows ~0.26, t₂ ~0.59, as the easy phantom's class ranges), × `signal`."""
    centre, width = (thresholds[0] + thresholds[1]) / 2, thresholds[1] - thresholds[0]
    return signal * NARROWING_MAX * normal_cdf((np.asarray(latent, dtype=np.float64) - centre) / width)


def sample_latents(rng: np.random.Generator, n_studies: int = 1) -> np.ndarray:
    """(n_studies, conditions, levels) latents in rsna.CONDITIONS × rsna.LEVELS order."""
    loadings = np.array([NOISE[rsna.CONDITION_GROUP[c]].loading for c in rsna.CONDITIONS])[None, :, None]
    patient = rng.standard_normal((n_studies, 1, 1))
    own = rng.standard_normal((n_studies, len(rsna.CONDITIONS), len(rsna.LEVELS)))
    return np.asarray(LEVEL_EFFECT) + loadings * patient + np.sqrt(1.0 - loadings ** 2) * own


def draw_grades(rng: np.random.Generator, probabilities: np.ndarray) -> np.ndarray:
    """One rater's grades drawn from p(grade | latent) (..., 3): one uniform per label."""
    u = rng.random(probabilities.shape[:-1])[..., None]
    return (u >= np.cumsum(probabilities, axis=-1)[..., :2]).sum(axis=-1)


@dataclass(frozen=True)
class StudyTruth:
    """One study's drawn truth per (condition, level): latent, shown narrowing, p(grade | latent), grade."""

    latent: dict[tuple[str, str], float]
    narrowing: dict[tuple[str, str], float]
    probabilities: dict[tuple[str, str], np.ndarray]
    grades: dict[tuple[str, str], int]


def group_thresholds(frequencies: dict[str, tuple[float, float, float]]) -> dict[str, tuple[float, float]]:
    """Each metric group's thresholds for the asked class frequencies."""
    return {group: thresholds_for(tuple(freq), NOISE[group]) for group, freq in frequencies.items()}


def sample_truth(rng: np.random.Generator, frequencies: dict[str, tuple[float, float, float]],
                 signal: float) -> StudyTruth:
    """Draw one study's latents and a rater's grades; the narrowing capped at 0.95 as the easy phantom's."""
    thresholds = group_thresholds(frequencies)
    latents = sample_latents(rng)[0]
    keys = [(c, lv) for c in rsna.CONDITIONS for lv in rsna.LEVELS]
    latent = {key: float(latents.ravel()[i]) for i, key in enumerate(keys)}
    groups = {key: rsna.CONDITION_GROUP[key[0]] for key in keys}
    probabilities = {key: grade_probabilities(latent[key], thresholds[groups[key]], NOISE[groups[key]])
                     for key in keys}
    grades = draw_grades(rng, np.stack([probabilities[key] for key in keys]))
    return StudyTruth(
        latent=latent,
        narrowing={key: float(min(0.95, narrowing(latent[key], thresholds[groups[key]], signal)))
                   for key in keys},
        probabilities=probabilities,
        grades={key: int(grade) for key, grade in zip(keys, grades, strict=True)},
    )


def model_description(frequencies: dict[str, tuple[float, float, float]]) -> dict:
    """The model's parameters for the manifest, enough to recompute every p(grade | latent)."""
    thresholds = group_thresholds(frequencies)
    return {
        "level_effect": list(LEVEL_EFFECT), "narrowing_max": NARROWING_MAX,
        "groups": {group: {"loading": NOISE[group].loading, "spread_any": NOISE[group].spread_any,
                           "spread_severe": NOISE[group].spread_severe, "thresholds": list(thresholds[group])}
                   for group in thresholds},
    }


def simulate(rng: np.random.Generator, n_studies: int, frequencies: dict[str, tuple[float, float, float]]
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Study index, condition and p(grade | latent) (N, 3) of every label of `n_studies` drawn studies, in
    submission row order: the phantom's truth without its pixels, for calibration and tests."""
    thresholds = group_thresholds(frequencies)
    latents = sample_latents(rng, n_studies)
    p = np.empty((*latents.shape, 3))
    for i, condition in enumerate(rsna.CONDITIONS):
        group = rsna.CONDITION_GROUP[condition]
        p[:, i] = grade_probabilities(latents[:, i], thresholds[group], NOISE[group])
    study = np.repeat(np.arange(n_studies), len(rsna.CONDITIONS) * len(rsna.LEVELS))
    conditions = np.tile(np.repeat(rsna.CONDITIONS, len(rsna.LEVELS)), n_studies)
    return study, conditions, p.reshape(-1, 3)
