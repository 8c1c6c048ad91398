"""Messy image folders and bad configurations: every problem named, with its file, before training."""
import io
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from conftest import TINY_IMAGE_SIZE, build_tiny_backbone, colour_image, encode, write_colour_dataset
from jobs import ingest
from jobs import train as train_job
from tl_core.model.backbones import export_feature_extractor
from tl_core.config import TrainConfig
from tl_core.data.images import DatasetError, decode_and_resize, list_image_folder, to_unit_range
from tl_core.model.classifier import BackboneError, build_classifier
from tl_core.data.sources import check_dataset, load_splits
from tl_core.data.checks import find_bad_files, header_dimensions, image_dimensions

REPO = Path(__file__).resolve().parents[1]
LIMITS = dict(min_side=8, max_pixels=100_000_000)
IS_ROOT = os.geteuid() == 0


def rgb(height=16, width=16, seed=0):
    return colour_image(np.random.default_rng(seed), 0, height, width)


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (16, 16))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (0, 0, 8, 16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def animated_gif() -> bytes:
    frames = [Image.fromarray(rgb(seed=1)), Image.fromarray(rgb(seed=2))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def huge(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (12000, 12000)).save(buffer, format=fmt)
    return buffer.getvalue()


GOOD = {  # file name -> bytes: all of these are images the job must use
    "plain.png": lambda: encode(rgb(), "PNG"),
    "png_named.jpg": lambda: encode(rgb(), "PNG"),  # misleading extension: content decides
    "cmyk.jpg": lambda: _cmyk_jpeg(),
    "sixteen_bit.png": lambda: _png16(),
    "palette_transparent.png": palette_png_with_transparency,
    "animated.gif": animated_gif,
    "no_extension": lambda: encode(rgb(), "JPEG"),
}
BAD = {  # file name -> (bytes, what the reason says)
    "zero_bytes.jpg": (lambda: b"", "empty file (0 bytes)"),
    "truncated.jpg": (lambda: encode(rgb(64, 64), "JPEG")[:300], ""),
    "notes.txt": (lambda: b"labels were checked by hand\n", "Unknown image file format"),
    "one_pixel.png": (lambda: encode(rgb(1, 1), "PNG"), "1x1 pixels is below the minimum side of 8"),
    "huge.png": (lambda: huge("PNG"), "12000x12000 pixels is above the limit of 100 megapixels"),
    "huge.jpg": (lambda: huge("JPEG"), "12000x12000 pixels is above the limit of 100 megapixels"),
}


def _cmyk_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb()).convert("CMYK").save(buffer, format="JPEG")
    return buffer.getvalue()


def _png16() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((rgb().astype(np.uint16)[..., 0] * 257)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory) -> Path:
    """One class folder with every kind of good and bad file, and one clean class."""
    root = tmp_path_factory.mktemp("messy")
    messy, clean = root / "messy", root / "clean"
    messy.mkdir()
    clean.mkdir()
    for name, data in GOOD.items():
        (messy / name).write_bytes(data())
    for name, (data, _) in BAD.items():
        (messy / name).write_bytes(data())
    for name in (".DS_Store", "Thumbs.db", "._plain.png"):  # operating-system files: ignored
        (messy / name).write_bytes(b"\0\1junk")
    (messy / ".ipynb_checkpoints").mkdir()
    (messy / ".ipynb_checkpoints" / "copy.png").write_bytes(encode(rgb(), "PNG"))
    nested = messy / "nested" / "deeper"
    nested.mkdir(parents=True)
    (nested / "inside.png").write_bytes(encode(rgb(), "PNG"))
    (nested / "loop").symlink_to(messy, target_is_directory=True)  # a symbolic link loop
    (messy / "self_loop").symlink_to(messy / "self_loop")
    (messy / "broken_link.png").symlink_to(root / "does-not-exist.png")
    (messy / os.fsdecode(b"caf\xe9_latin1_name.png")).write_bytes(encode(rgb(), "PNG"))  # not UTF-8
    for i in range(3):
        (clean / f"{i}.png").write_bytes(encode(rgb(seed=i), "PNG"))
    return root


def test_listing_follows_links_ignores_system_files_and_reports_loops(messy_folder):
    folder = list_image_folder(messy_folder)
    listed = {os.path.relpath(path, messy_folder) for path in folder.paths}
    expected_messy = {f"messy/{name}" for name in [*GOOD, *BAD]} | {
        "messy/nested/deeper/inside.png", os.fsdecode(b"messy/caf\xe9_latin1_name.png")}
    assert listed == expected_messy | {"clean/0.png", "clean/1.png", "clean/2.png"}
    problems = {os.path.relpath(path, messy_folder): reason for path, reason in folder.problems}
    assert problems["messy/nested/deeper/loop"].startswith("symbolic link loop: leads back to")
    assert problems["messy/self_loop"] == "Too many levels of symbolic links"
    assert problems["messy/broken_link.png"] == "broken symbolic link"
    assert {os.path.basename(path) for path in folder.ignored} == {
        ".DS_Store", "Thumbs.db", "._plain.png", ".ipynb_checkpoints"}


def test_every_bad_file_is_found_with_its_reason_and_good_ones_are_kept(messy_folder):
    bad = {os.path.relpath(item.path, messy_folder): item.reason
           for item in find_bad_files(list_image_folder(messy_folder), **LIMITS)}
    for name, (_, reason) in BAD.items():
        assert reason in bad.pop(f"messy/{name}")
    assert set(bad) == {"messy/nested/deeper/loop", "messy/self_loop", "messy/broken_link.png"}


@pytest.mark.parametrize("name", list(GOOD))
def test_unusual_but_valid_images_decode_to_rgb(name):
    image = to_unit_range(decode_and_resize(GOOD[name](), 16)).numpy()
    assert image.shape == (16, 16, 3) and 0 <= image.min() and image.max() <= 1


def test_sixteen_bit_png_keeps_its_full_range():
    image = decode_and_resize(_png16(), 16).numpy()
    expected = decode_and_resize(encode(rgb()[..., 0], "PNG"), 16).numpy()
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_palette_png_with_transparency_keeps_the_palette_colours():
    image = to_unit_range(decode_and_resize(palette_png_with_transparency(), 16)).numpy()
    np.testing.assert_allclose(image[:, 0], [[0, 1, 0]] * 16)  # index 1 = green
    np.testing.assert_allclose(image[:, -1], [[1, 0, 0]] * 16)  # index 0 = red (transparent: alpha dropped)


def test_non_utf8_file_names_are_read_and_printable(messy_folder):
    path = os.path.join(messy_folder, "messy", os.fsdecode(b"caf\xe9_latin1_name.png"))
    folder = list_image_folder(messy_folder)
    one = folder.select([folder.paths.index(path)])
    assert find_bad_files(one, **LIMITS) == []
    from tl_core.data.images import display_path, make_dataset

    images, _ = next(iter(make_dataset(one, 16, 1)))
    assert images.shape == (1, 16, 16, 3)
    assert display_path(path).endswith("caf\\xe9_latin1_name.png")


@pytest.mark.skipif(IS_ROOT, reason="root reads files whatever their permissions")
def test_unreadable_files_are_reported(tmp_path):
    folder = tmp_path / "cat"
    folder.mkdir()
    locked = folder / "locked.png"
    locked.write_bytes(encode(rgb(), "PNG"))
    locked.chmod(0)
    bad = find_bad_files(list_image_folder(tmp_path), **LIMITS)
    assert [(item.path, item.reason) for item in bad] == [(str(locked), "cannot read: Permission denied")]


def test_unreadable_files_are_reported_whoever_runs_the_check(tmp_path, monkeypatch):
    # The same path as above for any user: open() failing the way it does without read permission.
    folder = tmp_path / "cat"
    folder.mkdir()
    (folder / "locked.png").write_bytes(encode(rgb(), "PNG"))
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    bad = find_bad_files(list_image_folder(tmp_path), **LIMITS)
    assert [item.reason for item in bad] == ["cannot read: Permission denied"]


def test_image_headers_give_dimensions_without_decoding():
    for fmt in ("PNG", "GIF", "BMP"):
        assert header_dimensions(encode(rgb(13, 21), fmt)[:26]) == (21, 13)
    assert image_dimensions(io.BytesIO(encode(rgb(13, 21), "JPEG", exif=b"Exif\0\0" + b"\0" * 5000))) == (21, 13)
    assert image_dimensions(io.BytesIO(b"\xff\xd8\xff")) is None  # truncated: left to the decoder
    assert header_dimensions(b"not an image") is None


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2000))
def test_random_bytes_either_decode_or_are_reported(tmp_path, data):
    _check_one_file(tmp_path, data)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=arrays(np.uint8, st.tuples(st.integers(1, 40), st.integers(1, 40), st.sampled_from([1, 3, 4]))),
       fmt=st.sampled_from(["PNG", "JPEG", "BMP", "GIF"]), cut=st.floats(0, 1))
def test_random_images_and_their_truncations_decode_or_are_reported(tmp_path, image, fmt, cut):
    image = image[..., 0] if image.shape[-1] == 1 else image
    if fmt in ("JPEG", "BMP", "GIF") and image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    data = encode(image, fmt)
    if min(image.shape[:2]) >= 8 and cut == 1:
        assert _check_one_file(tmp_path, data) is None  # a whole image of a usable size is always kept
    _check_one_file(tmp_path, data[:int(len(data) * cut)])


def _check_one_file(tmp_path, data: bytes):
    folder = tmp_path / "one"
    folder.mkdir(exist_ok=True)
    path = folder / "file.img"
    path.write_bytes(data)
    bad = find_bad_files(list_image_folder(tmp_path), **LIMITS)
    if bad:
        assert len(bad) == 1 and bad[0].reason
        return bad[0].reason
    image = to_unit_range(decode_and_resize(data, 8)).numpy()  # what the check passes, training can decode
    assert image.shape == (8, 8, 3) and np.all((0 <= image) & (image <= 1))
    return None


# Structure and configuration.

def _config(data_dir, **overrides) -> TrainConfig:
    return TrainConfig(data_dir=str(data_dir), batch_size=2, **overrides)


def _classes(root: Path, counts: dict) -> Path:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            (root / name / f"{i}.png").write_bytes(encode(rgb(seed=i), "PNG"))
    return root


def test_only_one_class_is_refused(tmp_path):
    _classes(tmp_path / "train", {"cat": 3})
    _classes(tmp_path / "validation", {"cat": 2})
    with pytest.raises(DatasetError, match=r"only one class, \['cat'\].*point --data-dir there"):
        load_splits(_config(tmp_path).data, tmp_path)


def test_class_folders_without_train_and_validation_are_split_per_class(tmp_path):
    _classes(tmp_path, {"cat": 10, "dog": 5})
    train, validation, _ = load_splits(_config(tmp_path, validation_split=0.2, seed=4).data, tmp_path)
    assert np.bincount(validation.labels).tolist() == [2, 1] and np.bincount(train.labels).tolist() == [8, 4]
    assert not set(train.paths) & set(validation.paths)
    again, _, _ = load_splits(_config(tmp_path, validation_split=0.2, seed=4).data, tmp_path)
    assert again.paths == train.paths  # the seed fixes the split


def test_a_class_too_small_to_split_is_named(tmp_path):
    _classes(tmp_path, {"cat": 4, "dog": 1})
    with pytest.raises(DatasetError, match="class 'dog' has 1 image: a train/validation split needs at least 2"):
        load_splits(_config(tmp_path).data, tmp_path)


def test_missing_train_folder_and_mismatched_classes(tmp_path):
    _classes(tmp_path / "validation", {"cat": 2, "dog": 2})
    with pytest.raises(DatasetError, match="train is not a directory"):
        load_splits(_config(tmp_path).data, tmp_path)
    _classes(tmp_path / "train", {"cat": 2, "cow": 2})
    with pytest.raises(DatasetError, match="train and validation need the same class folders"):
        load_splits(_config(tmp_path).data, tmp_path)


def test_batch_larger_than_the_dataset_is_refused(tmp_path):
    _classes(tmp_path, {"cat": 5, "dog": 5})
    with pytest.raises(DatasetError, match="batch size 100 is larger than the 8 training images: use --batch-size 8"):
        load_splits(TrainConfig(data_dir=str(tmp_path)).data, tmp_path, batch_size=100)
    with pytest.raises(DatasetError, match="4 training images per worker"):
        load_splits(TrainConfig(data_dir=str(tmp_path)).data, tmp_path, batch_size=5, workers=2)


@pytest.mark.parametrize("field, value", [
    ("validation_split", 1.0), ("bad_files", "ignore"), ("min_image_side", 0), ("max_image_megapixels", -1.0)])
def test_bad_values_are_refused_with_the_field_name(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def fixed_size_backbone(path: Path) -> str:
    """A SavedModel traced for 32x32 images only."""
    import tensorflow as tf

    class FixedSize(tf.Module):
        def __init__(self):
            self.kernel = tf.Variable(tf.ones([3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images, [1, 2]) @ self.kernel

    tf.saved_model.save(FixedSize(), str(path))
    return str(path)


def test_a_backbone_traced_for_one_image_size_names_the_problem(tmp_path):
    fixed = fixed_size_backbone(tmp_path / "fixed")
    assert build_classifier(fixed, 2, 32).output_shape == (None, 2)
    with pytest.raises(BackboneError, match=r"does not accept 48x48 RGB images .*\(None, 32, 32, 3\).*--image-size"):
        build_classifier(fixed, 2, 48)


def test_a_backbone_that_refuses_the_image_size_leaves_no_run_directory(tmp_path, colour_dataset, capsys):
    fixed = fixed_size_backbone(tmp_path / "fixed")
    args = ["--data-dir", str(colour_dataset), "--backbone", fixed, "--image-size", "48", "--batch-size", "8",
            "--output-dir", str(tmp_path / "run")]
    assert train_job.main(args) == 2
    assert "does not accept 48x48" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # so the corrected command is not refused as "already holds files"
    assert train_job.main([*args[:-4], "--image-size", "32", *args[-4:]]) == 0


# The policy, end to end through the command line.

@pytest.fixture(scope="module")
def dataset_with_bad_files(tmp_path_factory) -> Path:
    root = write_colour_dataset(tmp_path_factory.mktemp("with_bad"), {"train": 12, "validation": 6})
    (root / "train" / "red" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    (root / "validation" / "blue" / "tiny.png").write_bytes(encode(rgb(2, 2), "PNG"))
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("backbone") / "tiny"
    export_feature_extractor(build_tiny_backbone(), path)
    return str(path)


def _args(data_dir, backbone, run_dir, *extra):
    return ["--data-dir", str(data_dir), "--backbone", backbone, "--image-size", str(TINY_IMAGE_SIZE),
            "--batch-size", "8", "--recipe", "seed", "--epochs", "3", "--learning-rate", "0.05", "--output-dir", str(run_dir),
            *extra]


def test_bad_files_stop_the_job_listing_each_before_anything_is_written(dataset_with_bad_files, backbone, tmp_path,
                                                                       capsys):
    assert train_job.main(_args(dataset_with_bad_files, backbone, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "error: 2 file(s) cannot be used for training:" in err
    assert f"{dataset_with_bad_files}/train/red/corrupt.jpg: " in err
    assert f"{dataset_with_bad_files}/validation/blue/tiny.png: 2x2 pixels is below the minimum side" in err
    assert "--skip-bad-files" in err
    assert not (tmp_path / "run").exists()


def test_skip_policy_trains_without_bad_files_and_records_them(dataset_with_bad_files, backbone, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_job.main(_args(dataset_with_bad_files, backbone, run_dir, "--skip-bad-files")) == 0
    assert "Skipping 2 bad file(s)" in capsys.readouterr().out
    skipped = json.loads((run_dir / "skipped_files.json").read_text())
    assert {Path(item["path"]).name for item in skipped} == {"corrupt.jpg", "tiny.png"}
    assert all(item["reason"] for item in skipped)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (metrics["run"]["train_images"], metrics["run"]["validation_images"]) == (24, 12)
    assert metrics["run"]["skipped_files"] == 2


def test_check_mode_validates_data_and_backbone_and_writes_nothing(dataset_with_bad_files, backbone, tmp_path, capsys):
    clean = write_colour_dataset(tmp_path / "clean", {"train": 4, "validation": 2})
    assert train_job.main([*_args(clean, backbone, tmp_path / "run"), "--check"]) == 0
    assert "Check passed" in capsys.readouterr().out
    assert train_job.main([*_args(clean, "/nonexistent/backbone", tmp_path / "run"), "--check"]) == 2
    assert "could not load backbone '/nonexistent/backbone'" in capsys.readouterr().err
    # Bad files found by --check: status 1, as jobs.ingest --check (jobs/cli.py); the same files stop a run with 2.
    assert train_job.main([*_args(dataset_with_bad_files, backbone, tmp_path / "run"), "--check"]) == 1
    err = capsys.readouterr().err
    assert "error: 2 file(s) cannot be used for training:" in err and "corrupt.jpg" in err and "tiny.png" in err
    assert train_job.main([*_args(dataset_with_bad_files, backbone, tmp_path / "run"), "--check", "--skip-bad-files"]) == 0
    assert "(2 file(s) would be skipped)" in capsys.readouterr().out
    assert not (tmp_path / "run").exists()


def test_ingest_check_lists_bad_files_and_ingest_can_leave_them_out(dataset_with_bad_files, tmp_path, capsys):
    assert ingest.main(["--data-dir", str(dataset_with_bad_files), "--check"]) == 1
    out = capsys.readouterr().out
    assert "2 file(s) cannot be used" in out and "corrupt.jpg" in out and "tiny.png" in out
    assert ingest.main(["--data-dir", str(dataset_with_bad_files), "--output", str(tmp_path / "pq")]) == 2
    assert ingest.main(["--data-dir", str(dataset_with_bad_files), "--output", str(tmp_path / "pq"),
                        "--skip-bad-files"]) == 0
    rows = pq.read_table(tmp_path / "pq" / "train").num_rows + pq.read_table(tmp_path / "pq" / "validation").num_rows
    assert rows == 36


def test_bad_parquet_rows_are_named_by_file_and_row(tmp_path):
    from tl_core.data.parquet import write_parquet_shards

    root = write_colour_dataset(tmp_path / "folders", {"train": 3, "validation": 2})
    (root / "train" / "red" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    for split in ("train", "validation"):
        write_parquet_shards(list_image_folder(root / split), tmp_path / "pq" / split, rows_per_file=4)
    check = check_dataset(_config(tmp_path / "pq").data, tmp_path)
    assert [(Path(item.path).name, item.row) for item in check.bad_files] == [("part-00001.parquet", 2)]
    from tl_core.data.sources import enforce_policy

    with pytest.raises(DatasetError, match="rows cannot be skipped"):
        enforce_policy(check, "skip")


# Writing: the run directory read-only or the disk full.

@pytest.mark.skipif(IS_ROOT, reason="root writes into read-only directories")
def test_read_only_output_directory_is_a_clear_error(colour_dataset, backbone, tmp_path, capsys):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    assert train_job.main(_args(colour_dataset, backbone, parent / "run")) == 2
    assert "cannot write the run directory" in capsys.readouterr().err


def test_read_only_file_system_is_a_clear_error_whoever_runs_it(colour_dataset, backbone, tmp_path, capsys,
                                                                 monkeypatch):
    # The same path as above for any user: the file system refusing the run directory (EROFS).
    import errno

    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "mounted_ro")):
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert train_job.main(_args(colour_dataset, backbone, tmp_path / "mounted_ro" / "run")) == 2
    err = capsys.readouterr().err
    assert f"cannot write the run directory {tmp_path / 'mounted_ro' / 'run'}: Read-only file system" in err
    assert "Traceback" not in err


def test_disk_full_during_training_is_a_clear_error_and_resume_finishes(colour_dataset, backbone, tmp_path):
    """A file-size limit makes every write past 90 KB fail the way a full disk does: the epochs' files (the
    checkpoint, history, TensorBoard events, about 50 KB with the fed batch's picture) fit, the exported model does not."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (90_000, 90_000))

    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "jobs.train", *_args(colour_dataset, backbone, run_dir)]
    full = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    assert full.returncode == 2, full.stderr[-3000:]
    assert "error: " in full.stderr and "Traceback" not in full.stderr
    assert "--resume" in full.stderr  # completed epochs are kept
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "metrics.json").exists()
    for path in run_dir.glob("*.json"):
        json.loads(path.read_text())  # whatever is there is complete

    resumed = subprocess.run([sys.executable, "-m", "jobs.train", "--config", str(run_dir / "config.json"), "--resume"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["accuracy"] > 0.5


def test_the_batch_size_check_counts_the_images_left_after_skipping(dataset_with_bad_files, tmp_path):
    skip = TrainConfig(data_dir=str(dataset_with_bad_files), bad_files="skip").data
    with pytest.raises(DatasetError, match="larger than the 24 training images"):  # 25 files, 1 skipped
        check_dataset(skip, tmp_path, batch_size=25)
    fail = TrainConfig(data_dir=str(dataset_with_bad_files)).data
    assert len(check_dataset(fail, tmp_path, batch_size=25).bad_files) == 2  # the bad files are reported first
