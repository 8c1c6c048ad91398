"""Class folders -> Parquet shards (jobs.ingest) -> the same images, labels and training."""
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TINY_IMAGE_SIZE, tiny_config
from jobs.ingest import main as ingest
from tl_core.data.images import decode_and_resize, list_image_folder, make_dataset
from tl_core.data.sources import list_split
from tl_core.data.parquet import IMAGE_SIZE_KEY, ParquetDatasetError, write_parquet_shards
from tl_core.training.train import train
from tl_core.run_dir import prepare_run_dir


@pytest.fixture(scope="module")
def parquet_dataset(colour_dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("parquet") / "data"
    assert ingest(["--data-dir", str(colour_dataset), "--output", str(output), "--rows-per-file", "20"]) == 0
    return output


def test_ingest_round_trips_bytes_labels_and_classes(colour_dataset, parquet_dataset):
    for split in ("train", "validation"):
        folder = list_image_folder(colour_dataset / split)
        files = sorted((parquet_dataset / split).glob("*.parquet"))
        assert len(files) == -(-len(folder) // 20)
        rows = [row for f in files for row in pq.read_table(f).to_pylist()]
        assert [r["path"] for r in rows] == folder.paths
        assert [r["label"] for r in rows] == folder.labels.tolist()
        assert [r["class_name"] for r in rows] == [folder.class_names[i] for i in folder.labels]
        assert all(r["image"] == open(r["path"], "rb").read() for r in rows)
        assert not list((parquet_dataset / split).glob(".*"))  # no temporary files left


def test_parquet_pipeline_gives_the_same_images_as_folders(colour_dataset, parquet_dataset):
    folder = list_image_folder(colour_dataset / "validation")
    shards = list_split(parquet_dataset / "validation", folder.class_names)
    assert shards.class_names == folder.class_names and len(shards) == len(folder)
    np.testing.assert_array_equal(shards.labels, folder.labels)
    from_folder = np.concatenate([x.numpy() for x, _ in make_dataset(folder, TINY_IMAGE_SIZE, 8)])
    from_parquet = np.concatenate([x.numpy() for x, _ in make_dataset(shards, TINY_IMAGE_SIZE, 8)])
    np.testing.assert_array_equal(from_parquet, from_folder)


def test_folders_and_their_shards_name_and_hash_the_same_images(colour_dataset, parquet_dataset):
    """Both kinds of source give what callers use (data/source.ImageSource), with no question of which kind they hold:
    the same SHA-256 per image (shards keep the encoded bytes), each row named by its file, shard and row, and a
    selection or a worker's shard of either keeps its names and digests in step."""
    from tl_core.data.source import ImageSource

    folder = list_image_folder(colour_dataset / "train")
    shards = list_split(parquet_dataset / "train", folder.class_names)
    for source in (folder, shards):
        assert all(hasattr(source, member) for member in ImageSource.__annotations__)
        assert source.image_size is None and list(source.ignored) == []
    assert shards.content_digests("Hashing") == folder.content_digests("Hashing")
    names = shards.names()
    assert [name.split(" (")[0] for name in names] == folder.paths
    assert names[21].endswith("part-00001.parquet, row group 0, row 1)")  # 20 rows per file
    for source in (folder, shards):
        part = source.select([5, 2, 30])
        assert part.names() == [source.names()[row] for row in (5, 2, 30)]
        assert part.content_digests("Hashing") == [source.content_digests("Hashing")[row] for row in (5, 2, 30)]
    assert folder.identity() != shards.identity()


def test_parquet_shards_are_equal_disjoint_and_complete(parquet_dataset):
    source = list_split(parquet_dataset / "train")
    seen = []
    for rank in range(3):
        shard = source.shard(rank, 3, seed=4)
        assert len(shard) == len(source) // 3
        rows = [(f, g, r) for f, g, b, e in shard.segments for r in range(b, e)]
        labels = [label for _, labels in shard.iter_segments(range(len(shard.segments))) for label in labels]
        assert labels == shard.labels.tolist()
        seen += rows
    assert len(seen) == len(set(seen)) == 3 * (len(source) // 3)


@pytest.mark.parametrize("count", [3, 7])
def test_parts_cut_the_rows_in_order_with_array_split_sizes(colour_dataset, parquet_dataset, count):
    """Validation shared across workers: worker i computes part(i, count) and the parts are gathered by these sizes."""
    sizes = [len(rows) for rows in np.array_split(np.arange(48), count)]
    for source in (list_split(parquet_dataset / "train"), list_image_folder(colour_dataset / "train")):
        parts = [source.part(index, count) for index in range(count)]
        assert [len(part) for part in parts] == sizes
        np.testing.assert_array_equal(np.concatenate([part.labels for part in parts]), source.labels)
        whole = np.concatenate([x.numpy() for x, _ in make_dataset(source, TINY_IMAGE_SIZE, 5)])
        pieces = np.concatenate([x.numpy() for part in parts for x, _ in make_dataset(part, TINY_IMAGE_SIZE, 5)])
        np.testing.assert_array_equal(pieces, whole)


def test_training_on_parquet(tiny_backbone, parquet_dataset, tmp_path):
    config = prepare_run_dir(tiny_config(tiny_backbone, parquet_dataset, tmp_path / "run"))
    assert train(config)["accuracy"] >= 0.9


def test_ingest_refuses_to_overwrite_and_reports_foreign_parquet(colour_dataset, parquet_dataset, tmp_path, capsys):
    assert ingest(["--data-dir", str(colour_dataset), "--output", str(parquet_dataset)]) == 2
    assert "already holds files" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    pq.write_table(pq.read_table(next((parquet_dataset / "train").glob("*.parquet"))).replace_schema_metadata(None),
                   foreign / "x.parquet")
    with pytest.raises(ParquetDatasetError, match="jobs.ingest"):
        list_split(foreign)


@pytest.fixture(scope="module")
def presized_dataset(colour_dataset, tmp_path_factory):
    """Ingested at the training size: raw pixels, decoded and resized once."""
    output = tmp_path_factory.mktemp("presized") / "data"
    assert ingest(["--data-dir", str(colour_dataset), "--output", str(output), "--rows-per-file", "20",
                   "--image-size", str(TINY_IMAGE_SIZE)]) == 0
    return output


def test_presized_rows_hold_exactly_what_training_decodes(colour_dataset, tmp_path):
    folder = list_image_folder(colour_dataset / "train")
    # Files and row groups that do not divide each other: every row must still hold its own image.
    write_parquet_shards(folder, tmp_path / "train", rows_per_file=7, rows_per_group=3, image_size=TINY_IMAGE_SIZE)
    shards = list_split(tmp_path / "train")
    assert shards.image_size == TINY_IMAGE_SIZE
    for file in sorted((tmp_path / "train").glob("*.parquet")):
        assert pq.read_schema(file).metadata[IMAGE_SIZE_KEY] == str(TINY_IMAGE_SIZE).encode()
        for row in pq.read_table(file).to_pylist():
            expected = decode_and_resize(open(row["path"], "rb").read(), TINY_IMAGE_SIZE).numpy()
            assert row["image"] == expected.tobytes()  # lossless: the uint8 pixels training would make


def test_presized_parquet_feeds_the_same_batches_as_folders(colour_dataset, presized_dataset):
    folder = list_image_folder(colour_dataset / "train")
    shards = list_split(presized_dataset / "train", folder.class_names)
    for augment in (False, True):
        from_folder = list(make_dataset(folder, TINY_IMAGE_SIZE, 8, augment_images=augment, seed=2, epoch=1))
        from_parquet = list(make_dataset(shards, TINY_IMAGE_SIZE, 8, augment_images=augment, seed=2, epoch=1))
        for (a, label_a), (b, label_b) in zip(from_folder, from_parquet, strict=True):
            for key in (("images", "transforms") if augment else (None,)):
                np.testing.assert_array_equal(a[key] if key else a, b[key] if key else b)
            np.testing.assert_array_equal(label_a, label_b)


def test_training_on_presized_parquet(tiny_backbone, presized_dataset, tmp_path):
    config = prepare_run_dir(tiny_config(tiny_backbone, presized_dataset, tmp_path / "run"))
    assert train(config)["accuracy"] >= 0.9


def test_a_different_image_size_gets_one_line_with_both_sizes_and_the_fix(tiny_backbone, presized_dataset, tmp_path,
                                                                          capsys):
    from jobs.train import main as train_job

    assert train_job(["--data-dir", str(presized_dataset), "--backbone", tiny_backbone, "--image-size", "24",
                      "--batch-size", "8", "--output-dir", str(tmp_path / "run")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "stored at 32x32" in error and "--image-size is 24" in error and "--image-size 24" in error
    assert "python -m jobs.ingest" in error
    assert not (tmp_path / "run").exists()  # refused before the run directory is written


def test_a_presized_row_of_the_wrong_length_is_a_bad_row(presized_dataset, tmp_path):
    from tl_core.data.checks import find_bad_rows

    table = pq.read_table(presized_dataset / "validation" / "part-00000.parquet")
    images = table.column("image").to_pylist()
    images[3] = images[3][:-5]
    broken = tmp_path / "validation"
    broken.mkdir()
    pq.write_table(table.set_column(0, "image", pa.array(images, pa.binary())), broken / "part-00000.parquet")
    bad = find_bad_rows(list_split(broken), min_side=8, max_pixels=10**8)
    assert [(item.row, item.reason.split(",")[0]) for item in bad] == [(3, f"holds {32 * 32 * 3 - 5} bytes")]


def test_predict_refuses_presized_parquet_with_what_to_do(presized_dataset):
    from tl_core.serving.predict import list_inputs

    with pytest.raises(ValueError, match="jobs.evaluate"):
        list_inputs(presized_dataset / "validation")


@pytest.mark.parametrize("train_format, validation_format", [("folders", "folders"), ("folders", "parquet"),
                                                              ("parquet", "folders"), ("parquet", "parquet")])
@pytest.mark.parametrize("skip", [False, True])
def test_mixed_split_formats_with_a_bad_file(tiny_backbone, colour_dataset, parquet_dataset, tmp_path, capsys,
                                             train_format, validation_format, skip):
    """train/ and validation/ each as class folders (holding a bad file) or Parquet shards, with and without
    --skip-bad-files: a bad file stops the run in one line, or is skipped; never a stack trace."""
    from jobs.train import main as train_job

    data = tmp_path / "data"
    for split, fmt in (("train", train_format), ("validation", validation_format)):
        shutil.copytree((colour_dataset if fmt == "folders" else parquet_dataset) / split, data / split)
        if fmt == "folders":
            (data / split / "red" / "broken.png").write_bytes(b"not an image")
    folders = [split for split, fmt in (("train", train_format), ("validation", validation_format)) if fmt == "folders"]
    status = train_job(["--data-dir", str(data), "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
                        "--batch-size", "8", "--epochs", "1", "--output-dir", str(tmp_path / "run"),
                        "--cache-dir", str(tmp_path / "cache"), *(["--skip-bad-files"] if skip else [])])
    err = capsys.readouterr().err
    if folders and not skip:
        assert status == 2 and f"{len(folders)} file(s) cannot be used for training" in err, err
        assert not (tmp_path / "run").exists()
    else:
        assert status == 0, err
        skipped = json.loads((tmp_path / "run" / "skipped_files.json").read_text()) if folders else []
        assert sorted(Path(item["path"]).parent.parent.name for item in skipped) == folders
