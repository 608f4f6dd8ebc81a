"""The phantom's knobs: class frequencies, signal strength, image size, and the rate of each pitfall."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from lumbar_fast.errors import LumbarFastError

#: real class balance over labelled rows per metric group (docs/metric.md): Normal/Mild, Moderate, Severe
REAL_FREQUENCIES: dict[str, tuple[float, float, float]] = {
    "spinal": (0.88, 0.07, 0.05),
    "foraminal": (0.78, 0.18, 0.04),
    "subarticular": (0.71, 0.19, 0.10),
}
BALANCED_FREQUENCIES: dict[str, tuple[float, float, float]] = {
    group: (1 / 3, 1 / 3, 1 / 3) for group in REAL_FREQUENCIES
}

DIFFICULTIES: tuple[str, ...] = ("real", "easy")
#: Rows = Columns of a series under size_spread "rsna", with their shares: the competition's spread as the
#: issue that asked for it describes it (mostly 384-512, some 256-640), not a count of the real files
RSNA_SIZES: dict[int, float] = {256: 0.04, 320: 0.06, 384: 0.38, 448: 0.12, 512: 0.36, 640: 0.04}
SIZE_SPREADS: tuple[str, ...] = ("base", "rsna")


@dataclass(frozen=True)
class PitfallRates:
    """Probability of each real-data pitfall; per series unless the comment says otherwise."""

    shuffled_instances: float = 0.2  # instance numbers out of spatial order, not starting at 1
    multi_stack: float = 0.2  # axial series: 2-3 stacks tilted through different discs
    varied_size: float = 0.5  # per stack: Rows/Columns other than the base image size
    monochrome1: float = 0.08
    rescale: float = 0.1  # RescaleSlope/RescaleIntercept other than 1/0
    bits16: float = 0.15  # BitsStored 16 with a large value range (the base is 12-bit)
    rle: float = 0.1  # RLE Lossless transfer syntax
    j2k: float = 0.05  # JPEG 2000 Lossless transfer syntax
    corrupt: float = 0.05  # per study: one unlabelled file truncated or overwritten
    duplicate_series: float = 0.05  # per study: a second, unlabelled series of one type
    missing_condition: float = 0.05  # per study: one condition unlabelled at all five levels
    missing_label: float = 0.01  # per (study, condition, level)
    # the series is not centred on the spine: sagittal stacks shifted along x, axial stacks running on past
    # L1/L2 or S1. Off by default (it is drawn only when on), so earlier phantoms and their numbers hold.
    off_centre: float = 0.0

    @classmethod
    def none(cls) -> PitfallRates:
        """Every pitfall off: clean 12-bit, uncompressed, spatially ordered, fully labelled data."""
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def with_rates(self, **rates: float) -> PitfallRates:
        """A copy with some rates changed; unknown names or rates outside [0, 1] are a user error."""
        unknown = sorted(set(rates) - set(self.names()))
        if unknown:
            raise LumbarFastError(f"unknown pitfall {unknown[0]!r}; choose from {', '.join(self.names())}")
        for name, rate in rates.items():
            if not 0.0 <= rate <= 1.0:
                raise LumbarFastError(f"pitfall rate {name}={rate} is outside [0, 1]")
        return replace(self, **rates)


@dataclass(frozen=True)
class PhantomOptions:
    """Everything that shapes a phantom data set besides its size."""

    seed: int = 0
    image_size: int = 384  # base Rows = Columns; series deviate from it at rate pitfalls.varied_size
    signal: float = 1.0  # scales the narrowing the pixels show: lower is subtler (labels unchanged)
    balanced: bool = False  # equal class frequencies instead of the real ones
    pitfalls: PitfallRates = field(default_factory=PitfallRates)
    # "real": a latent severity graded by a noisy rater, with an answer key (grading.py); "easy": classes
    # drawn from disjoint narrowing ranges and labelled exactly (the phantom before issue 23, byte for byte)
    difficulty: str = "real"
    # "base": every series at image_size (varied_size pitfall aside); "rsna": each series draws its own from
    # RSNA_SIZES (image_size unused), the real data's spread, for timing the pipeline at its real cost
    size_spread: str = "base"

    def __post_init__(self) -> None:
        if not 64 <= self.image_size <= 1024:
            raise LumbarFastError(f"--image-size {self.image_size} is outside 64..1024")
        if not 0.0 <= self.signal <= 2.0:
            raise LumbarFastError(f"--signal {self.signal} is outside 0..2")
        if self.difficulty not in DIFFICULTIES:
            raise LumbarFastError(f"difficulty {self.difficulty!r} is not one of {', '.join(DIFFICULTIES)}")
        if self.size_spread not in SIZE_SPREADS:
            raise LumbarFastError(f"size spread {self.size_spread!r} is not one of {', '.join(SIZE_SPREADS)}")

    @property
    def frequencies(self) -> dict[str, tuple[float, float, float]]:
        return BALANCED_FREQUENCIES if self.balanced else REAL_FREQUENCIES
