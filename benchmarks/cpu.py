"""CPU benchmark of the training job against the classic recipe: `python -m benchmarks.cpu`.

Measures, in one run on the same images (the built-in cats-vs-dogs sample, 1400 train / 600
validation) and the same backbone (the built-in MobileNetV2):
  1. the backbone alone: forward images/s at the job's batch size on decoded tensors (the ceiling),
     and the augmented input pipeline alone (no model);
  2. this project's 6-epoch recipe with augmentation: training images/s per epoch and its ratio to
     the ceiling, wall time, validation accuracy;
  3. the same recipe on Keras' ImageDataGenerator + model.fit, as the classic recipe runs it;
  4. the 6-epoch recipe without augmentation in cached-features mode, and a long (60-epoch)
     schedule on the same cached features;
  5. peak RSS of one training epoch (a separate process each, started by a small launcher so that
     it cannot inherit this process's peak; checked on a control) on 2000 and 8000 images, and with
     cached features spilled to Parquet.
Medians are over epochs (or repetitions) of one run; ratios are between figures of the same run.
Prints a table and writes it as JSON (--output, default benchmarks/results/cpu.json).
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import report
from benchmarks.provenance import provenance
import numpy as np
import tensorflow as tf

from tl_core.model import assets
from tl_core.model.backbones import resolve_backbone
from tl_core.config import SEED_RECIPE, TrainConfig
from tl_core.data.images import list_image_folder, make_dataset, to_unit_range
from tl_core.model.classifier import build_classifier, compile_classifier
from tl_core.data.sample import load_animal_arrays, prepare_cats_vs_dogs, stratified_split
from tl_core.training.train import train
from tl_core.run_dir import prepare_run_dir

BATCH = 100
EPOCHS = 6


def backbone_ceiling(handle: str, images: np.ndarray, repetitions: int = 7) -> float:
    """Median forward images/s of the frozen backbone on decoded, resized tensors."""
    model = build_classifier(handle, 2, 224)
    backbone = model.get_layer("backbone")
    forward = tf.function(lambda x: backbone(x, training=False))
    batch = tf.constant(images[:BATCH])
    forward(batch).numpy()  # trace and warm up
    rates = []
    for _ in range(repetitions):
        start = time.perf_counter()
        forward(batch).numpy()
        rates.append(BATCH / (time.perf_counter() - start))
    return statistics.median(rates)


def pipeline_alone(data_dir: Path, epochs: int = 3) -> float:
    """Median images/s of the training pipeline with augmentation on and no model (the host's side: read, decode,
    resize, draw transforms; the warp itself runs in the training step): what the backbone shares the CPU with."""
    train_folder = list_image_folder(data_dir / "train")
    rates = []
    for epoch in range(epochs):
        start = time.perf_counter()
        for features, _ in make_dataset(train_folder, 224, BATCH, shuffle=True, augment_images=True, epoch=epoch):
            features["images"].numpy()
        rates.append(len(train_folder) / (time.perf_counter() - start))
    return statistics.median(rates)


def run_project(data_dir: Path, handle: str, work: Path, name: str, **overrides) -> dict:
    # The seed's recipe (this benchmark measures its 6-epoch form against ImageDataGenerator), with overrides.
    config = prepare_run_dir(TrainConfig(**{**SEED_RECIPE, "data_dir": str(data_dir), "backbone": handle,
                                            "output_dir": str(work / name), **overrides}))
    start = time.perf_counter()
    metrics = train(config)
    wall = time.perf_counter() - start
    history = json.loads((work / name / "history.json").read_text())
    return {
        "wall_seconds": wall,
        "feature_seconds": metrics["run"]["feature_seconds"],
        "epoch_seconds": [row["seconds"] for row in history],
        "train_images_per_second_median": statistics.median(row["images_per_second"] for row in history[1:]),
        "val_accuracy": metrics["accuracy"],
        "val_accuracy_by_epoch": [row["val_accuracy"] for row in history],
    }


def run_image_data_generator(data_dir: Path, handle: str) -> dict:
    """The classic recipe as published: ImageDataGenerator.flow_from_directory + model.fit."""
    from tf_keras.preprocessing.image import ImageDataGenerator

    tf.keras.utils.set_random_seed(0)
    train_generator = ImageDataGenerator(
        rescale=1.0 / 255, rotation_range=40, width_shift_range=0.2, height_shift_range=0.2,
        shear_range=0.2, zoom_range=0.2, horizontal_flip=True, fill_mode="nearest",
    ).flow_from_directory(data_dir / "train", target_size=(224, 224), batch_size=BATCH, class_mode="sparse")
    validation_generator = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory(
        data_dir / "validation", target_size=(224, 224), batch_size=BATCH, class_mode="sparse")
    model = build_classifier(handle, train_generator.num_classes, 224)
    compile_classifier(model, tf.keras.optimizers.Adam(1e-3))

    class EpochTimer(tf.keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            seconds.append(time.perf_counter() - self.start)

    seconds = []
    start = time.perf_counter()
    history = model.fit(train_generator, epochs=EPOCHS, validation_data=validation_generator,
                        callbacks=[EpochTimer()], verbose=0).history
    wall = time.perf_counter() - start
    images = train_generator.samples + validation_generator.samples
    return {
        "wall_seconds": wall,
        "epoch_seconds": seconds,
        "epoch_seconds_median": statistics.median(seconds),
        # Per epoch it reads, augments and runs the backbone on every training image and runs the
        # backbone on every validation image again.
        "images_per_second_median": images / statistics.median(seconds),
        "train_images_per_second_median": train_generator.samples / statistics.median(seconds),
        "val_accuracy": history["val_accuracy"][-1],
        "val_accuracy_by_epoch": history["val_accuracy"],
    }


def write_class_folders(root: Path, images: np.ndarray, labels: np.ndarray, names: dict) -> Path:
    """PNG class folders with a 90/10 seeded stratified split, like the sample's."""
    for name, label in names.items():
        rows = np.flatnonzero(labels == label)
        for row, validation in zip(rows, stratified_split(labels[rows], 0.1, seed=7)):
            folder = root / ("validation" if validation else "train") / name
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{row:05d}.png").write_bytes(tf.io.encode_png(images[row][:, :, None]).numpy())
    return root


# Started by this small launcher, the measured process cannot inherit the benchmark's own peak: on
# Linux a forked child's peak RSS starts at its parent's resident size, and survives exec.
LAUNCHER = """
import json, os, subprocess, sys, tempfile
with tempfile.TemporaryFile() as errors:
    process = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=errors)
    _, status, usage = os.wait4(process.pid, 0)
    errors.seek(0)
    print(json.dumps({"status": status, "maxrss_kib": usage.ru_maxrss, "stderr": errors.read()[-2000:].decode(errors="replace")}))
"""


def peak_rss_mib(command: list[str]) -> float:
    """Peak resident memory of a command, in MiB, measured through the launcher."""
    done = subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    if report["status"] != 0:
        raise RuntimeError(f"{command} failed: {report['stderr']}")
    return report["maxrss_kib"] / 1024  # kilobytes on Linux


def training_peak_rss_mib(data_dir: Path, handle: str, output_dir: Path, *flags: str) -> float:
    """Peak resident memory of one training epoch, in a fresh process."""
    return peak_rss_mib([sys.executable, "-m", "jobs.train", "--recipe", "seed", "--data-dir", str(data_dir), "--backbone",
                         handle, "--epochs", "1", "--output-dir", str(output_dir), *flags])


def control_peak_rss_mib(megabytes: int = 512) -> dict:
    """The method checked on a process that touches a known amount: its figure is that amount plus Python's own."""
    baseline = peak_rss_mib([sys.executable, "-c", "pass"])
    touched = peak_rss_mib([sys.executable, "-c", f"block = b'x' * ({megabytes} * 2**20)"])
    return {"allocated_mib": megabytes, "python_alone_mib": baseline, "measured_mib": touched,
            "measured_minus_python_mib": touched - baseline}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="benchmarks/results/cpu.json")
    args = parser.parse_args(argv)
    cache = assets.cache_dir()
    data_dir = prepare_cats_vs_dogs(cache)
    handle = resolve_backbone("mobilenet_v2", cache)
    results = provenance()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        validation = list_image_folder(data_dir / "validation")
        decoded = np.concatenate([to_unit_range(x).numpy() for x, _ in make_dataset(validation, 224, BATCH).take(1)])
        print("1/6 backbone alone ...", flush=True)
        results["backbone_images_per_second"] = backbone_ceiling(handle, decoded)
        results["pipeline_images_per_second"] = pipeline_alone(data_dir)
        print("2/6 this project, 6 epochs with augmentation ...", flush=True)
        results["project_augmented"] = run_project(data_dir, handle, work, "augmented")
        print("3/6 ImageDataGenerator recipe, 6 epochs ...", flush=True)
        results["image_data_generator"] = run_image_data_generator(data_dir, handle)
        print("4/6 this project, 6 epochs, no augmentation, cached features ...", flush=True)
        results["project_cached"] = run_project(data_dir, handle, work, "cached", augment=False)
        print("5/6 this project, 60 head epochs on cached features ...", flush=True)
        results["project_cached_60"] = run_project(data_dir, handle, work, "cached60", augment=False, epochs=60)
        print("6/6 peak memory at 2000 and 8000 images ...", flush=True)
        images, labels = load_animal_arrays(cache)
        two = {"cat": 2, "dog": 4}
        eight = {name: label for label, name in enumerate(
            ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse"])}
        results["peak_rss_control"] = control_peak_rss_mib()
        d2000 = write_class_folders(work / "d2000", images, labels, two)
        d8000 = write_class_folders(work / "d8000", images, labels, eight)
        results["peak_rss_mib"] = {
            "2000_images": training_peak_rss_mib(d2000, handle, work / "r2000"),
            "8000_images": training_peak_rss_mib(d8000, handle, work / "r8000"),
            # cached features forced to the Parquet spill (a 0 MB memory budget)
            "8000_images_cached_spill": training_peak_rss_mib(d8000, handle, work / "r8000s", "--no-augment",
                                                              "--feature-cache-memory-mb", "0"),
        }

    ceiling = results["backbone_images_per_second"]
    ours, idg, cached = results["project_augmented"], results["image_data_generator"], results["project_cached"]
    first_cached = cached["feature_seconds"] + cached["epoch_seconds"][0]
    results["ratios"] = {
        "training_epoch_vs_backbone_ceiling": ours["train_images_per_second_median"] / ceiling,
        "augmented_6_epoch_wall_vs_image_data_generator": ours["wall_seconds"] / idg["wall_seconds"],
        "image_data_generator_wall_vs_cached_6_epoch_wall": idg["wall_seconds"] / cached["wall_seconds"],
        "cached_later_epoch_vs_first_epoch": statistics.median(cached["epoch_seconds"][1:]) / first_cached,
        "peak_rss_8000_vs_2000": results["peak_rss_mib"]["8000_images"] / results["peak_rss_mib"]["2000_images"],
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(report.render("cpu", results))
    print(f"\nwritten to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
