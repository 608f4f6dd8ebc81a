"""The networks: `locator.py` (the level locator); more to come here: timm creation and weights, the
classifiers, test-time augmentation."""
