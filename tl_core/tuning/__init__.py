"""The search part: Ray Tune over the head on backbone features computed once (jobs.tune)."""
