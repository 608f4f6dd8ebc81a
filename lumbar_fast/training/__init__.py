"""The training core shared by every task (the classifier, the locator): the epoch loop, early stopping,
checkpoints, exact resume, the run folder and its per-epoch records. A task plugs in through
`lumbar_fast.training.task.TrainingTask`; the core holds no task-specific branch (docs/architecture.md).
"""
