import contextlib
import io
import secrets
from pathlib import Path

import numpy as np
import pytest

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tl_core.model.backbones import export_feature_extractor  # noqa: E402
from benchmarks.s3_server import S3Server  # noqa: E402,F401  (the tests' S3 server; test modules import it from here)

TINY_IMAGE_SIZE = 32
REPO = Path(__file__).resolve().parents[1]


def manual_pages() -> list[Path]:
    """The user's manual: README.md and the guides in docs/."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def manual_text() -> str:
    return "\n".join(page.read_text() for page in manual_pages())


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    """uint8 array [H, W] or [H, W, C] -> encoded bytes, written by Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def colour_image(rng, dominant: int, height: int, width: int) -> np.ndarray:
    """Noise with one dominant RGB channel: the class is visible whatever the augmentation does."""
    image = rng.integers(0, 90, size=(height, width, 3), dtype=np.uint8)
    image[:, :, dominant] += 150
    return image


def write_colour_dataset(root: Path, per_class: dict, seed: int = 0) -> Path:
    """root/{train,validation}/{blue,red}/ of PNG and JPEG files of varied sizes."""
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name, dominant in (("blue", 2), ("red", 0)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                image = colour_image(rng, dominant, int(rng.integers(20, 60)), int(rng.integers(20, 60)))
                fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
                (folder / f"{name}_{i:03d}.{ext}").write_bytes(encode(image, fmt))
    return root


def build_tiny_backbone() -> tf.keras.Model:
    """A fixed random conv net: 8 conv features plus the mean colour, 11 features in all."""
    inputs = tf.keras.Input((None, None, 3))
    conv = tf.keras.layers.Conv2D(8, 3, strides=4, activation="relu",
                                  kernel_initializer=tf.keras.initializers.GlorotUniform(seed=1))(inputs)
    features = tf.keras.layers.Concatenate()([
        tf.keras.layers.GlobalAveragePooling2D()(conv),
        tf.keras.layers.GlobalAveragePooling2D()(inputs),
    ])
    return tf.keras.Model(inputs, features)


def tiny_config(tiny_backbone: str, data_dir, output_dir=None, recipe: str = "seed", **overrides):
    """The tests' training configuration: the seed's recipe (augmentation in every epoch's step; or, with
    recipe="default", the default one: cached features, a hidden layer, one-cycle) on the tiny backbone at 32x32,
    batch 8, 4 epochs, learning rate 0.05, seeded."""
    from tl_core.config import SEED_RECIPE, TrainConfig

    values = dict(SEED_RECIPE if recipe == "seed" else {}, data_dir=str(data_dir), backbone=tiny_backbone,
                  image_size=TINY_IMAGE_SIZE, batch_size=8, epochs=4, learning_rate=0.05, seed=3,
                  output_dir=str(output_dir) if output_dir else None)
    return TrainConfig(**{**values, **overrides})


class StopAfter(tf.keras.callbacks.Callback):
    """Interrupt the run (as Ctrl-C does) once epoch `epochs` is recorded: train()'s own callback, which checkpoints
    the epoch, runs before the callbacks it is given."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> str:
    """A tiny SavedModel feature extractor, loaded through hub.KerasLayer like any TF Hub handle."""
    path = tmp_path_factory.mktemp("backbone") / "tiny_backbone"
    export_feature_extractor(build_tiny_backbone(), path)
    return str(path)


@pytest.fixture(scope="session")
def colour_dataset(tmp_path_factory) -> Path:
    return write_colour_dataset(tmp_path_factory.mktemp("data"), {"train": 24, "validation": 10})


@pytest.fixture(scope="session")
def real_cache() -> Path:
    """The asset cache that `python -m jobs.assets` filled (the README's test command runs it first)."""
    from tl_core.model.assets import cache_dir

    return cache_dir()


def read_tensorboard(directory) -> dict:
    """{tag: [(step, value), ...]} of the event files in directory, as TensorBoard's own reader sees them."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(directory), size_guidance={"tensors": 0})  # keep every event
    accumulator.Reload()
    return {tag: [(event.step, tf.make_ndarray(event.tensor_proto)) for event in accumulator.Tensors(tag)]
            for tag in accumulator.Tags()["tensors"]}


def assert_tensorboard_matches_history(run_dir) -> None:
    """Every epoch of history.json once in the run's TensorBoard scalars, with the same values."""
    import json

    history = json.loads((Path(run_dir) / "history.json").read_text())
    train, validation = (read_tensorboard(Path(run_dir) / "tensorboard" / split) for split in ("train", "validation"))
    epochs = [row["epoch"] for row in history]
    for board, tag, key in ((train, "epoch_loss", "loss"), (train, "epoch_accuracy", "accuracy"),
                            (train, "epoch_learning_rate", "learning_rate"),
                            (train, "epoch_images_per_second", "images_per_second"),
                            (validation, "epoch_loss", "val_loss"), (validation, "epoch_accuracy", "val_accuracy")):
        assert [step for step, _ in board[tag]] == epochs, tag
        np.testing.assert_allclose([float(value) for _, value in board[tag]], [row[key] for row in history], rtol=1e-6)
    assert [int(value) for _, value in train["epoch_phase"]] == [int(row["phase"] == "fine_tune") for row in history]


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch) -> S3Server:
    """The S3 server, with this process's (and its children's) AWS configuration pointing at it."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.environment().items():
        monkeypatch.setenv(name, value)
    return s3_server


def upload(local: Path, uri: str) -> str:
    """Copy a local directory tree to a URI, as a user's `aws s3 cp --recursive` would; the URI."""
    from tl_core import storage

    storage.upload(local, uri)
    return uri


# One token for every Ray instance this process starts: Ray keeps the first token it reads for the process, and a
# later instance started with another was refused ("InvalidAuthToken": seen when a second test module started Ray).
RAY_AUTH_TOKEN = secrets.token_hex(32)


@contextlib.contextmanager
def local_ray(environment: dict | None = None):
    """Ray on this machine (4 CPUs on 127.0.0.1), its processes started with this process's environment and
    `environment` (they keep the environment they start with)."""
    with pytest.MonkeyPatch.context() as patch:
        # Ray turns on token auth for clusters it starts (Config.initialize re-reads the mode, so the
        # import order of ray does not matter); the token comes from here, not from ~/.ray.
        patch.delenv("RAY_AUTH_MODE", raising=False)
        patch.setenv("RAY_AUTH_TOKEN", RAY_AUTH_TOKEN)
        for name, value in (environment or {}).items():
            patch.setenv(name, value)
        import ray

        ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
