"""Stage-1 level localisation: find each level's slice and point in a series, so that unlabelled studies get
crops. One model per sequence (`models/locator.py`) reads every slice of a series as a 2.5D image and gives,
per target (condition × level), a score per slice and a heatmap of where on it.

The pieces, as the classifier's: `config.py` (arguments, panels, monitors), `targets.py` (series and their
labelled points), `losses.py`, `decode.py` (outputs → points → tables), `metrics.py` (point, slice and
level-name errors; the mean-position baseline), `task.py` (the task the training core runs), `runs.py`
(train, resume, read and evaluate run folders), `locate.py` (the `locate` API). Its batches come from
`loaders/series.py`.
"""
