import contextlib
import faulthandler
import io
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

# Hermetic: every Ray the tests use is one they start (RAY_ADDRESS=local: never the cluster of $RAY_ADDRESS or of a
# `ray start` record on this machine, alive or dead), its files in a temporary directory of this session (never the
# machine's /tmp/ray), its token this session's (Ray writes ~/.ray/auth_token for a new cluster when it finds no
# token: not in the user's home); every process the tests start inherits SESSION_MARK, by which the session finds
# what is left.
RAY_TMPDIR = tempfile.mkdtemp(prefix="tl-ray-")  # short: Ray's socket paths inside it must stay under 108 bytes
# One token for every Ray instance of the session: Ray keeps the first token it reads for a process, and a later
# instance started with another was refused ("InvalidAuthToken": seen when a second test module started Ray).
RAY_AUTH_TOKEN = secrets.token_hex(32)
SESSION_MARK = ("TL_TEST_SESSION", secrets.token_hex(8))
os.environ.update({"RAY_ADDRESS": "local", "RAY_TMPDIR": RAY_TMPDIR, "RAY_AUTH_TOKEN": RAY_AUTH_TOKEN,
                   SESSION_MARK[0]: SESSION_MARK[1]})
HOME_TOKEN = Path.home() / ".ray" / "auth_token"
HOME_TOKEN_BEFORE = HOME_TOKEN.exists()

import tl_core  # noqa: F401,E402  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

from tl_core.model.backbones import export_feature_extractor  # noqa: E402
from tl_core.registry.promotion import PromotionRule  # noqa: E402
from benchmarks.s3_server import S3Server  # noqa: E402,F401  (the tests' S3 server; test modules import it from here)

TINY_IMAGE_SIZE = 32
# A promotion rule any challenger passes: the retrain tests that need a promotion over a champion.
ANY_CHALLENGER = PromotionRule(min_improvement=-1.0, significance=1.0, max_class_drop=1.0)
REPO = Path(__file__).resolve().parents[1]


def processes_of_this_session() -> dict[int, str]:
    """{pid: command line} of every process but this one that carries this session's mark in its environment: what
    the tests started (and what those started), wherever it was re-parented to."""
    mark, found = "=".join(SESSION_MARK).encode(), {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int(entry.name) != os.getpid() and mark in (entry / "environ").read_bytes().split(b"\0"):
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or another user's
            continue
    return found


def end_processes_of_this_session(grace: float) -> dict[int, str]:
    """Wait up to grace seconds for the session's processes to end (Ray's take a moment after ray.shutdown()), then
    kill the rest; {pid: command line} of those killed."""
    deadline = time.monotonic() + grace
    while (left := processes_of_this_session()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


# pytest-timeout (pyproject.toml: the limit per test) fails a test that runs past its limit from a SIGALRM handler,
# which Python runs only between two bytecodes of the main thread: never while it waits in C code that does not give
# it back (seen: ray.init() retrying a dead address). HANG_GRACE seconds later, a thread ends the session instead,
# naming the test, with every thread's stack, and ends the processes the session started.
HANG_GRACE = float(os.environ.get("TL_TEST_HANG_GRACE", "60"))
HANG_TIMER = pytest.StashKey[threading.Timer]()


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_set_timer(item, settings):
    if settings.timeout > 0:
        timer = threading.Timer(settings.timeout + HANG_GRACE, end_hung_session, (item, settings.timeout))
        timer.daemon = True
        timer.start()
        item.stash[HANG_TIMER] = timer
    # None: pytest-timeout sets its own timer as well


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_timeout_cancel_timer(item):
    if HANG_TIMER in item.stash:
        item.stash[HANG_TIMER].cancel()


def end_hung_session(item, limit: float) -> None:
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture:  # back to the real stdout and stderr, with what the test printed
        capture.suspend_global_capture(in_=True)
        printed = "".join(capture.read_global_capture())
    out = sys.__stderr__
    print(f"{printed if capture else ''}\n{'+' * 30} Timeout {'+' * 30}\n{item.nodeid} ran past its limit of "
          f"{limit:g} s and did not stop {HANG_GRACE:g} s later (it waits where the timeout's signal cannot reach it); "
          "every thread's stack:", file=out, flush=True)
    faulthandler.dump_traceback(file=out, all_threads=True)
    killed = end_processes_of_this_session(grace=0)
    print("".join(f"killed {pid}: {command[:200]}\n" for pid, command in killed.items()) +
          f"Ending the test session: {item.nodeid} timed out.", file=out, flush=True)
    pytest_unconfigure()
    os._exit(1)


def pytest_unconfigure(config=None):
    shutil.rmtree(RAY_TMPDIR, ignore_errors=True)
    if config is not None:  # the session's own end (a hung session's ends with os._exit): S3 shut down in order, as
        from tl_core import storage  # every command's process does (jobs/cli.py: exit_after)

        storage.shut_down(wait_seconds=60)


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind():
    """The session ends with no process of its own running (checked after every other fixture's teardown: the
    first fixture set up is the last torn down)."""
    yield
    left = end_processes_of_this_session(grace=30) if Path("/proc/self/environ").exists() else {}
    assert HOME_TOKEN_BEFORE or not HOME_TOKEN.exists(), f"the tests wrote {HOME_TOKEN}"
    assert not left, "processes the tests started were still running 30 s after the last test (killed now):\n" + \
        "\n".join(f"  {pid}: {command[:300]}" for pid, command in left.items())


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


def findings_of(output_dir) -> list[dict]:
    """The rows of an audit's findings.parquet."""
    import pyarrow.parquet as pq

    return pq.read_table(Path(output_dir) / "findings.parquet").to_pylist()


def assert_the_sample_audit(output_dir) -> None:
    """The audit of the built-in sample (jobs.audit's, or a default run's from its own features) finds what the sample
    holds: 5 groups of exact copies across its splits, near pairs across them above the threshold (none of them an
    exact copy again), at least one likely label error."""
    report = json.loads((Path(output_dir) / "audit.json").read_text())
    assert report["exact_duplicate_groups"]["leakage"] == 5 and report["validation_images_also_in_train"] == 5
    assert report["images"] == {"train": 1400, "validation": 600}
    findings = findings_of(output_dir)
    near = [f for f in findings if f["kind"] in ("near_leakage", "near_duplicate")]
    pairs = report["near_duplicate_pairs"]  # the sample's near pairs cross its splits (none within one, measured)
    assert pairs["near_leakage"] >= 1 and report["label_issues"]["train"] >= 1
    assert len(near) == pairs["near_duplicate"] + pairs["near_leakage"]  # each pair a finding
    assert all(f["score"] >= 0.97 for f in near) and report["thresholds"]["near_similarity"] == 0.97
    exact = {tuple(sorted(f["paths"])) for f in findings if f["kind"] == "leakage"}
    assert not exact & {tuple(sorted(f["paths"])) for f in near}


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
                            (validation, "epoch_loss", "val_loss"), (validation, "epoch_accuracy", "val_accuracy"),
                            (validation, "epoch_balanced_accuracy", "val_balanced_accuracy"),
                            (validation, "epoch_macro_f1", "val_macro_f1")):
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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    from benchmarks.mlflow_server import MlflowServer

    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture
def server(mlflow_server):
    """The tests' MLflow tracking server (benchmarks/mlflow_server.py), running (started again if a test stopped it)."""
    if mlflow_server.process is None:
        mlflow_server.start()
    return mlflow_server


def upload(local: Path, uri: str) -> str:
    """Copy a local directory tree to a URI, as a user's `aws s3 cp --recursive` would; the URI."""
    from tl_core import storage

    storage.upload(local, uri)
    return uri


@contextlib.contextmanager
def local_ray(environment: dict | None = None):
    """Ray on this machine (4 CPUs on 127.0.0.1), its processes started with this process's environment and
    `environment` (they keep the environment they start with)."""
    with pytest.MonkeyPatch.context() as patch:
        # Ray turns on token auth for clusters it starts (Config.initialize re-reads the mode, so the
        # import order of ray does not matter); the token is the session's RAY_AUTH_TOKEN (above), not ~/.ray's.
        patch.delenv("RAY_AUTH_MODE", raising=False)
        for name, value in (environment or {}).items():
            patch.setenv(name, value)
        import ray

        ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()
