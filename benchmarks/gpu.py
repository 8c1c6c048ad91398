"""GPU benchmark, one GPU, a few minutes: `python -m benchmarks.gpu`.

Prints images/s per GPU for
  - the backbone alone (the built-in MobileNetV2, 224x224) on decoded tensors: the SavedModel
    through hub.KerasLayer in float32, with and without XLA, and the same network rebuilt in Keras
    under the mixed_bfloat16 policy with XLA;
  - the whole training step as the job runs it, from uint8 batches: scale, ImageDataGenerator warp
    (on the device), backbone, head, loss, gradients, Adam; in float32 and bfloat16, XLA on and off;
    the batches are already on the device, so this is what the GPU can consume;
  - this project's training epoch end to end (train(), the tf.data pipeline included), XLA off and on;
and beside them the host side: images/s the tf.data pipeline delivers on this machine's cores, for
photo folders (~500x375 JPEG, benchmarks/photos.py) and the same photos pre-sized to 224x224
(`jobs.ingest --image-size 224`), with the cores one GPU needs at the measured step rate.
Writes JSON (--output). --allow-cpu runs it on a CPU as a smoke test (no XLA training step:
compiling the backbone's step takes minutes there).
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
import tensorflow as tf

from benchmarks.host_input import per_core_rate
from benchmarks.photos import write_photo_dataset
from benchmarks.provenance import provenance
from tl_core.model import assets
from tl_core.data import augment
from tl_core.model.backbones import MOBILENET_V2, keras_backbone, resolve_backbone
from tl_core.config import SEED_RECIPE, TrainConfig
from tl_core.data.images import list_image_folder, make_dataset
from tl_core.data.sources import list_split
from tl_core.model.classifier import build_classifier, compile_classifier
from tl_core.data.step import training_model
from tl_core.data.parquet import write_parquet_shards
from tl_core.data.sample import prepare_cats_vs_dogs
from tl_core.training.train import train
from tl_core.run_dir import prepare_run_dir


def images_per_second(forward, batch, repetitions: int) -> float:
    forward(batch).numpy()  # compile and warm up
    rates = []
    for _ in range(repetitions):
        start = time.perf_counter()
        forward(batch).numpy()
        rates.append(len(batch) / (time.perf_counter() - start))
    return statistics.median(rates)


def training_step_rate(classifier, batch_size: int, steps: int, jit: bool) -> float:
    """images/s of fit() on one uint8 batch (with its transforms) repeated: the step alone, data already on the device."""
    trainer = training_model(classifier, 224, augment=True)
    compile_classifier(trainer, tf.keras.optimizers.Adam(1e-3), jit_compile=jit)
    images = tf.random.uniform([batch_size, 224, 224, 3], maxval=256, dtype=tf.int32, seed=0)
    features = {"images": tf.cast(images, tf.uint8),
                "transforms": augment.random_transforms(batch_size, tf.constant([0, 0], tf.int64), 224, 224)}
    labels = tf.zeros([batch_size], tf.int32)
    batches = tf.data.Dataset.from_tensors((features, labels)).cache().repeat()
    seconds = []

    class Timer(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # wait for the step
            seconds.append(time.perf_counter() - self.start)

    trainer.fit(batches, steps_per_epoch=steps + 2, epochs=1, verbose=0, callbacks=[Timer()])
    return batch_size / statistics.median(seconds[2:])  # the first steps trace and compile


def host_rates(work: Path, photos_per_class: int) -> dict:
    """tf.data images/s on this machine's cores (wall clock) and per core, for photo folders and pre-sized Parquet."""
    photos = write_photo_dataset(work / "photos", {"train": photos_per_class})
    folder = list_image_folder(photos / "train")
    write_parquet_shards(folder, work / "presized", image_size=224)
    presized = list_split(work / "presized")
    rates = {}
    for name, source in (("photo_folders", folder), ("presized_parquet", presized)):
        make = lambda: make_dataset(source, 224, 100, shuffle=True, augment_images=True)  # noqa: E731
        start = time.perf_counter()
        for _ in make():
            pass
        rates[name] = {"all_cores": len(source) / (time.perf_counter() - start),
                       "per_core": per_core_rate(make, len(source), repeats=3)["per_cpu_second"]}
    return rates


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256, help="per-GPU batch (default 256)")
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--photos-per-class", type=int, default=100, help="photos per class for the host rates")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test)")
    parser.add_argument("--output", help="JSON results (default benchmarks/results/gpu.json on a GPU; a CPU smoke "
                        "test writes nothing unless given)")
    args = parser.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        print("error: TensorFlow sees no GPU (pass --allow-cpu for a CPU smoke test)", file=sys.stderr)
        return 2
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    cache = assets.cache_dir()
    handle = resolve_backbone(MOBILENET_V2, cache)
    batch = tf.random.uniform([args.batch_size, 224, 224, 3], seed=0)
    results = {**provenance(), "batch_size": args.batch_size}  # provenance: the GPUs, the host's CPUs

    def report(key, value, unit="img/s per GPU"):
        results[key] = value
        print(f"{key:<34} {value:>8.0f} {unit}", flush=True)

    backbone = build_classifier(handle, 2, 224).get_layer("backbone")
    report("backbone_fp32", images_per_second(tf.function(lambda x: backbone(x, training=False)), batch, args.repetitions))
    report("backbone_fp32_xla", images_per_second(
        tf.function(lambda x: backbone(x, training=False), jit_compile=True), batch, args.repetitions))
    bf16 = keras_backbone(MOBILENET_V2, cache, bf16=True)
    report("backbone_bf16_xla", images_per_second(
        tf.function(lambda x: bf16(x, training=False), jit_compile=True), batch, args.repetitions))

    # The whole step with on-device augmentation: float32 (the hub SavedModel, as the default job runs)
    # and bfloat16 (--bf16: the same network built in Keras), XLA off and on.
    for dtype in ("fp32", "bf16"):
        for jit in (False, True) if gpus else (False,):
            visible = keras_backbone(MOBILENET_V2, cache, bf16=True) if dtype == "bf16" else None
            classifier = build_classifier(handle, 2, 224, keras_backbone=visible)
            report(f"training_step_{dtype}{'_xla' if jit else ''}",
                   training_step_rate(classifier, args.batch_size, args.repetitions, jit))

    with tempfile.TemporaryDirectory() as tmp:
        results["host"] = host_rates(Path(tmp), args.photos_per_class)
    step = max(value for key, value in results.items() if key.startswith("training_step_"))
    for name, rate in results["host"].items():
        report(f"host_{name}_all_cores", rate["all_cores"], f"img/s on {os.cpu_count()} cores")
        report(f"host_{name}_per_core", rate["per_core"], f"img/s per core: {step / rate['per_core']:.1f} cores "
               f"feed the fastest step ({step:.0f} img/s)")

    data_dir = prepare_cats_vs_dogs(cache)
    # XLA-compiling the whole training step (hub SavedModel included) takes many minutes on a CPU.
    for jit in (False, True) if gpus else (False,):
        with tempfile.TemporaryDirectory() as tmp:
            # The seed's recipe: every epoch runs the whole step (augmentation, backbone) on the device.
            config = prepare_run_dir(TrainConfig(**{**SEED_RECIPE, "data_dir": str(data_dir), "batch_size": args.batch_size,
                                                    "epochs": args.epochs, "jit_compile": jit,
                                                    "output_dir": str(Path(tmp) / "run")}))
            train(config)
            history = json.loads((Path(tmp) / "run" / "history.json").read_text())
        report("training_epoch_xla" if jit else "training_epoch",
               statistics.median(r["images_per_second"] for r in history[1:]))

    output = args.output or ("benchmarks/results/gpu.json" if gpus else None)
    if output:  # CPU smoke figures never land among the results
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(results, indent=2) + "\n")
        print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
