"""The registry part: data fingerprints, the model registry, scheduled champion/challenger retraining."""
