"""GPU benchmark, one GPU, a few minutes: `python -m benchmarks.gpu`.

Prints images/s per GPU for
  - the backbone alone (the built-in MobileNetV2, 224x224) on decoded tensors: the SavedModel
    through hub.KerasLayer in float32, with and without XLA, and the same network rebuilt in Keras
    under the mixed_bfloat16 policy with XLA (what a bf16 export of the backbone would give);
  - this project's training epoch (augmentation on, the tf.data pipeline included) with and without
    XLA, at a per-GPU batch large enough to fill the GPU;
and writes them as JSON (--output). --allow-cpu runs it on a CPU as a smoke test.
"""
import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf

from tl_core import assets
from tl_core.backbones import MOBILENET_V2, keras_backbone, resolve_backbone
from tl_core.config import TrainConfig
from tl_core.model import build_classifier
from tl_core.sample_data import prepare_cats_vs_dogs
from tl_core.train import prepare_run_dir, train


def images_per_second(forward, batch, repetitions: int) -> float:
    forward(batch).numpy()  # compile and warm up
    rates = []
    for _ in range(repetitions):
        start = time.perf_counter()
        forward(batch).numpy()
        rates.append(len(batch) / (time.perf_counter() - start))
    return statistics.median(rates)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=256, help="per-GPU batch (default 256)")
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (smoke test)")
    parser.add_argument("--output", default="benchmarks/results/gpu.json")
    args = parser.parse_args(argv)
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus and not args.allow_cpu:
        print("error: TensorFlow sees no GPU (pass --allow-cpu for a CPU smoke test)", file=sys.stderr)
        return 2
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    cache = assets.cache_dir()
    handle = resolve_backbone("mobilenet_v2", cache)
    batch = tf.random.uniform([args.batch_size, 224, 224, 3], seed=0)
    results = {"device": [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus] or ["cpu"],
               "batch_size": args.batch_size}

    backbone = build_classifier(handle, 2, 224).get_layer("backbone")

    def report(key, value):
        results[key] = value
        print(f"{key:<22} {value:.0f} img/s per GPU", flush=True)

    report("backbone_fp32", images_per_second(tf.function(lambda x: backbone(x, training=False)), batch, args.repetitions))
    report("backbone_fp32_xla", images_per_second(
        tf.function(lambda x: backbone(x, training=False), jit_compile=True), batch, args.repetitions))
    bf16 = keras_backbone(MOBILENET_V2, cache, bf16=True)
    report("backbone_bf16_xla", images_per_second(
        tf.function(lambda x: bf16(x, training=False), jit_compile=True), batch, args.repetitions))

    data_dir = prepare_cats_vs_dogs(cache)
    # XLA-compiling the whole training step (hub SavedModel included) takes many minutes on a CPU.
    for jit in (False, True) if gpus else (False,):
        with tempfile.TemporaryDirectory() as tmp:
            config = prepare_run_dir(TrainConfig(data_dir=str(data_dir), batch_size=args.batch_size, epochs=args.epochs,
                                                 jit_compile=jit, output_dir=str(Path(tmp) / "run")))
            train(config)
            history = json.loads((Path(tmp) / "run" / "history.json").read_text())
        report("training_epoch_xla" if jit else "training_epoch",
               statistics.median(r["images_per_second"] for r in history[1:]))

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
