"""The data part: image folders and Parquet shards, their checks, augmentation, the tf.data pipeline."""
