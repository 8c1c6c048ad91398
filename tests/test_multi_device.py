"""MirroredStrategy over two logical CPU devices: the in-process multi-device path a multi-GPU machine takes.

Logical devices must be configured before TensorFlow initialises its devices, so each check runs
in a fresh Python process.
"""
import json
import subprocess
import sys
import textwrap

from conftest import TINY_IMAGE_SIZE

SETUP = """
import json, sys
import tl_core
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def run_script(body: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", SETUP + textwrap.dedent(body), *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_each_replica_warps_its_own_images_on_its_own_device(tiny_backbone, colour_dataset):
    result = run_script("""
        import numpy as np
        from tl_core.data.images import list_image_folder, make_dataset
        from tl_core.model.classifier import build_classifier
        from tl_core.data.step import training_model
        folder = list_image_folder(sys.argv[1] + "/train")
        dataset = make_dataset(folder, 32, 8, augment_images=True, seed=4)
        with mirrored.scope():
            trainer = training_model(build_classifier(sys.argv[2], 2, 32), 32, augment=True)
        features, _ = next(iter(dataset))
        single = trainer(features).numpy()
        step = tf.function(lambda x: mirrored.run(trainer, args=(x,)))
        batch, _ = next(iter(mirrored.experimental_distribute_dataset(dataset)))
        parts = mirrored.experimental_local_results(step(batch))
        graph = step.get_concrete_function(batch).graph
        print(json.dumps({"warps": sorted(op.device for op in graph.get_operations()
                                          if op.type == "ImageProjectiveTransformV3"),
                          "sizes": [len(part) for part in parts],
                          "max_difference": float(np.abs(np.concatenate(parts) - single).max())}))
    """, colour_dataset, tiny_backbone)
    # One warp per replica, each placed on its replica's device, each on its half of the batch.
    assert [device.split("/")[-1] for device in result["warps"]] == ["device:CPU:0", "device:CPU:1"]
    assert result["sizes"] == [4, 4]
    assert result["max_difference"] < 1e-5


def test_training_over_two_replicas_matches_one_device(tiny_backbone, colour_dataset, tmp_path):
    result = run_script("""
        import numpy as np
        from tl_core.config import SEED_RECIPE, TrainConfig
        from tl_core.data.images import list_image_folder, make_dataset, to_unit_range
        from tl_core.training.train import train
        from tl_core.run_dir import prepare_run_dir
        logits = {}
        for name, strategy in (("one", tf.distribute.get_strategy()), ("two", mirrored)):
            config = prepare_run_dir(TrainConfig(**{  # the seed's recipe: augmentation in every step
                **SEED_RECIPE, "data_dir": sys.argv[1], "backbone": sys.argv[2], "image_size": int(sys.argv[3]),
                "batch_size": 8, "epochs": 3, "learning_rate": 0.05, "seed": 3, "output_dir": f"{sys.argv[4]}/{name}",
                # then the whole opaque TF Hub module trains: its validation runs in a replica context (hub#649)
                "fine_tune_epochs": 1, "fine_tune_layers": 0, "fine_tune_learning_rate": 0.01}))
            train(config, strategy=strategy)
            serve = tf.saved_model.load(f"{sys.argv[4]}/{name}/model").signatures["serving_default"]
            images = np.concatenate([to_unit_range(x).numpy() for x, _ in
                                     make_dataset(list_image_folder(sys.argv[1] + "/validation"), int(sys.argv[3]), 8)])
            logits[name] = serve(images=tf.constant(images))["logits"].numpy()
        history = json.load(open(f"{sys.argv[4]}/two/history.json"))
        print(json.dumps({"max_difference": float(np.abs(logits["one"] - logits["two"]).max()),
                          "logit_scale": float(np.abs(logits["one"]).max()),
                          "losses": [row["loss"] for row in history], "phases": [row["phase"] for row in history]}))
    """, colour_dataset, tiny_backbone, TINY_IMAGE_SIZE, tmp_path)
    assert result["losses"][-1] < result["losses"][0]  # it trained, with augmentation in the step
    assert result["phases"] == ["head"] * 3 + ["fine_tune"]
    assert result["max_difference"] < 1e-4 * max(1.0, result["logit_scale"])
