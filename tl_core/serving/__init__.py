"""The serving part: exported SavedModels and TFLite, evaluation, batch prediction locally and on Ray."""
