"""The networks: `backbone.py` (timm creation, pretrained or local weights), `classifier.py` (the plain and
the multi-slice classifier), `locator.py` (the level locator), `tta.py` (test-time flip averaging)."""
