"""The training part: the run directory, the loop, strategies, the Ray launcher, the feature cache."""
