"""Class folders -> Parquet shards (jobs.ingest) -> the same images, labels and training."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import TINY_IMAGE_SIZE
from jobs.ingest import main as ingest
from tl_core.config import TrainConfig
from tl_core.data import list_image_folder, list_split, make_dataset
from tl_core.parquet_data import ParquetDatasetError
from tl_core.train import prepare_run_dir, train


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


def test_training_on_parquet(tiny_backbone, parquet_dataset, tmp_path):
    config = prepare_run_dir(TrainConfig(data_dir=str(parquet_dataset), backbone=tiny_backbone,
                                         image_size=TINY_IMAGE_SIZE, batch_size=8, epochs=4,
                                         learning_rate=0.05, seed=3, output_dir=str(tmp_path / "run")))
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
