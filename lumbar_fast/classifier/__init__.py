"""The classifier task: one 3-class model per MRI sequence on the cache's level crops (or whole slices),
trained by the core in `lumbar_fast.training`; `runs.train` and `runs.resume` are its entry
points."""
