"""The phantom: a synthetic RSNA 2024-layout data set whose severity labels are visible in the pixels."""

from lumbar_fast.phantom.generator import MANIFEST_NAME, PhantomSummary, generate, load_manifest
from lumbar_fast.phantom.options import PhantomOptions, PitfallRates

__all__ = ["MANIFEST_NAME", "PhantomOptions", "PhantomSummary", "PitfallRates", "generate", "load_manifest"]
