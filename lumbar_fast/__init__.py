"""lumbar-fast: RSNA 2024 lumbar spine MRI -> preprocessed cache -> fast EfficientNetV2 training."""

__version__ = "0.1.0"
