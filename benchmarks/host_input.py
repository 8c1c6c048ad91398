"""Host cost per training image, per CPU core, and how many cores one GPU needs: `python -m benchmarks.host_input`.

A GPU worker's CPU must deliver images as fast as its GPU consumes them. This measures what the
host does per training image, with tf.data (and pyarrow) held to one thread and the cost counted as
images per CPU-second of this process, i.e. per core, on two datasets made here:
  - the built-in sample (28x28 PNG silhouettes, 1400 training images), and
  - realistic photos (benchmarks/photos.py: ~500x375 JPEGs at quality 75, the size and compression
    of the classic recipe's cats_and_dogs_filtered images);
through these pipelines, in one run:
  before        the input path before the warp moved into the training step: read, decode to
                float32, resize, ImageDataGenerator warp on the host (float32 batches)
  decode        read + decode (uint8)
  + resize      read + decode + resize to 224x224 (uint8): folder input, augmentation off
  + augment     the same with augmentation on: the host only draws 8 numbers per image
  Parquet       `jobs.ingest` output (the files' encoded bytes): the same decode and resize
  pre-sized     `jobs.ingest --image-size 224` output (raw pixels): no decode, no resize
Each figure is the median of --repeats passes (epochs). From the per-core rates it prints how many host
cores one GPU needs at --backbone-rate images/s (default 8000: Keras' published MobileNetV2 figure
for an A100 at batch 32 in float32), and bytes per image on disk. Writes JSON (--output).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import pyarrow as pa
import tensorflow as tf

from benchmarks import report
from benchmarks.photos import write_photo_dataset
from benchmarks.provenance import provenance
from tl_core.model import assets
from tl_core.data import augment
from tl_core.data.images import encoded_images, epoch_seed, list_image_folder, make_dataset
from tl_core.data.sources import list_split
from tl_core.data.parquet import write_parquet_shards
from tl_core.data.sample import prepare_cats_vs_dogs

SIZE, BATCH = 224, 100
A100_MOBILENET_V2 = 8000  # images/s, keras.io/api/applications (A100, batch 32, float32)


def one_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    return ds.with_options(options)


def before(source, seed: int = 0, epoch: int = 0) -> tf.data.Dataset:
    """The host pipeline as it was before this change: float32 decode and resize, the warp on the host."""
    def decode(encoded, label):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.float32, expand_animations=False)
        return tf.clip_by_value(tf.image.resize(image, [SIZE, SIZE]), 0.0, 1.0), label

    ds = encoded_images(source, shuffle=True, seed=seed, epoch=epoch).map(decode).batch(BATCH)
    return ds.enumerate().map(
        lambda step, batch: (augment.random_transform(batch[0], tf.stack([epoch_seed(seed, epoch), step])), batch[1]))


def decode_only(source) -> tf.data.Dataset:
    def decode(encoded, label):
        return tf.io.decode_image(encoded, channels=3, expand_animations=False), label

    return encoded_images(source, shuffle=True, seed=0, epoch=0).map(decode)


def pipelines(folder, parquet, presized) -> dict:
    """name -> a function making one epoch's dataset (shuffled, as training reads it)."""
    return {
        "before": lambda: before(folder),
        "decode": lambda: decode_only(folder),
        "+ resize": lambda: make_dataset(folder, SIZE, BATCH, shuffle=True),
        "+ augment": lambda: make_dataset(folder, SIZE, BATCH, shuffle=True, augment_images=True),
        "Parquet + augment": lambda: make_dataset(parquet, SIZE, BATCH, shuffle=True, augment_images=True),
        "pre-sized": lambda: make_dataset(presized, SIZE, BATCH, shuffle=True),
        "pre-sized + augment": lambda: make_dataset(presized, SIZE, BATCH, shuffle=True, augment_images=True),
    }


def per_core_rate(make, count: int, repeats: int) -> dict:
    """Median images per CPU-second (all threads of this process) and per wall-second over repeated epochs.

    Each epoch's set-up (making the dataset, drawing its transforms at once) is not counted: it does
    not grow with the number of images. One unmeasured epoch first warms caches and thread pools."""
    for _batch in one_thread(make()):
        pass
    cpu_rates, wall_rates = [], []
    for _ in range(repeats):
        ds = one_thread(make())
        wall, cpu = time.perf_counter(), time.process_time()
        for _batch in ds:
            pass
        cpu_rates.append(count / (time.process_time() - cpu))
        wall_rates.append(count / (time.perf_counter() - wall))
    return {"per_cpu_second": statistics.median(cpu_rates), "per_wall_second": statistics.median(wall_rates)}


def disk_bytes(paths) -> int:
    return sum(os.path.getsize(path) for path in paths)


def measure(name: str, data_dir: Path, work: Path, repeats: int) -> dict:
    folder = list_image_folder(data_dir / "train")
    print(f"{name}: {len(folder)} training images; writing Parquet and pre-sized Parquet ...", flush=True)
    parquet_files = write_parquet_shards(folder, work / name / "parquet")
    presized_files = write_parquet_shards(folder, work / name / "presized", image_size=SIZE)
    parquet, presized = list_split(work / name / "parquet"), list_split(work / name / "presized")
    result = {"images": len(folder), "bytes_per_image": {
        "source_files": disk_bytes(folder.paths) / len(folder),
        "parquet": disk_bytes(parquet_files) / len(folder),
        "presized_parquet": disk_bytes(presized_files) / len(folder)}, "rates": {}}
    for pipeline, make in pipelines(folder, parquet, presized).items():
        result["rates"][pipeline] = per_core_rate(make, len(folder), repeats)
        print(f"  {pipeline:<20} {result['rates'][pipeline]['per_cpu_second']:>8.0f} img/s per core", flush=True)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.host_input", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone-rate", type=float, default=A100_MOBILENET_V2,
                        help=f"images/s one GPU's backbone consumes (default {A100_MOBILENET_V2}: A100, float32)")
    parser.add_argument("--photos-per-class", type=int, default=100, help="training photos per class (6 classes)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--output", default="benchmarks/results/host_input.json")
    args = parser.parse_args(argv)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    results = {**provenance(), "image_size": SIZE,
               "backbone_rate": args.backbone_rate, "datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = write_photo_dataset(work / "photos", {"train": args.photos_per_class})
        for name, data_dir in (("sample (28x28 PNG)", prepare_cats_vs_dogs(assets.cache_dir())),
                               ("photos (500x375 JPEG)", photos)):
            results["datasets"][name] = measure(name, data_dir, work, args.repeats)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(report.render("host_input", results))
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
