"""Training through open_clip_train: the entry point, what one run adapts, checks before work, the shard reader."""
