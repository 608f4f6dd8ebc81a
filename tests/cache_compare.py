"""Comparing two caches in tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lumbar_fast import cache


def assert_same_content(a: cache.CacheReader, b: cache.CacheReader) -> None:
    """Same arrays and tables, the errors table aside."""
    assert a.sequences() == b.sequences()
    for seq in a.sequences():
        np.testing.assert_array_equal(a.stack_images(seq), b.stack_images(seq))
        np.testing.assert_array_equal(a.level_images(seq), b.level_images(seq))
        pd.testing.assert_frame_equal(a.stack_index(seq), b.stack_index(seq))
        pd.testing.assert_frame_equal(a.level_labels(seq), b.level_labels(seq))
    pd.testing.assert_frame_equal(a.study_labels(), b.study_labels())
