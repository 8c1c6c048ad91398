"""jobs.predict: one row per input, bad files as rows with their error, the model's own probabilities."""
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from jobs import predict as predict_job
from tl_core.data.images import ImageFolder, list_image_folder, make_dataset, to_unit_range
from tl_core.data.parquet import write_parquet_shards


@pytest.fixture(scope="module")
def trained_model(tiny_backbone, colour_dataset, tmp_path_factory):
    from conftest import tiny_config
    from tl_core.training.train import train
    from tl_core.run_dir import prepare_run_dir

    config = tiny_config(tiny_backbone, colour_dataset, tmp_path_factory.mktemp("run") / "run", epochs=2)
    train(prepare_run_dir(config))
    return config.output_dir


def expected_probabilities(model_dir, paths):
    folder = ImageFolder(paths, np.zeros(len(paths), np.int32), ["x"])
    images = np.concatenate([to_unit_range(x).numpy() for x, _ in make_dataset(folder, 32, 8)])
    serve = tf.saved_model.load(f"{model_dir}/model").signatures["serving_default"]
    return serve(images=tf.constant(images))["probabilities"].numpy()


def test_folder_input_gives_one_row_per_file_with_bad_files_reported(trained_model, colour_dataset, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    good = sorted((colour_dataset / "validation" / "red").iterdir())[:5]
    for path in good:
        (inputs / path.name).write_bytes(path.read_bytes())
    (inputs / "notes.txt").write_text("not an image")
    (inputs / "cut.png").write_bytes(good[1].read_bytes()[:40] if good[1].suffix == ".png" else b"\x89PNG\r\n\x1a\n")
    assert predict_job.main(["--model", trained_model, "--input", str(inputs), "--output", str(tmp_path / "out"),
                             "--chunk-size", "3", "--batch-size", "2"]) == 0
    table = pq.read_table(tmp_path / "out")
    assert table.column_names == ["path", "predicted_class", "confidence", "p_blue", "p_red", "error"]
    rows = {row["path"].split("/")[-1]: row for row in table.to_pylist()}
    assert set(rows) == {p.name for p in good} | {"notes.txt", "cut.png"}
    assert rows["notes.txt"]["error"].startswith("Unknown image file format") and rows["notes.txt"]["p_red"] is None
    assert rows["cut.png"]["error"]
    ordered = sorted(str(inputs / p.name) for p in good)
    expected = expected_probabilities(trained_model, ordered)
    got = np.array([[rows[p.split("/")[-1]]["p_blue"], rows[p.split("/")[-1]]["p_red"]] for p in ordered])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert all(rows[p.name]["predicted_class"] == "red" for p in good)
    assert "2 could not be used" in capsys.readouterr().out


def test_list_and_parquet_inputs(trained_model, colour_dataset, tmp_path):
    paths = sorted(str(p) for p in (colour_dataset / "validation" / "blue").iterdir())[:4]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(paths + [str(tmp_path / "missing.jpg")]) + "\n")
    assert predict_job.main(["--model", trained_model, "--input", str(listing), "--output", str(tmp_path / "a")]) == 0
    rows = pq.read_table(tmp_path / "a").to_pylist()
    assert [row["path"] for row in rows] == paths + [str(tmp_path / "missing.jpg")]
    assert rows[-1]["error"] == "cannot read: No such file or directory"

    write_parquet_shards(list_image_folder(colour_dataset / "validation"), tmp_path / "pq", rows_per_file=7)
    assert predict_job.main(["--model", trained_model, "--input", str(tmp_path / "pq"), "--output", str(tmp_path / "b")]) == 0
    table = pq.read_table(tmp_path / "b")
    assert table.num_rows == 20 and table.column("error").null_count == 20
    by_path = {row["path"]: row for row in table.to_pylist()}
    np.testing.assert_allclose([[by_path[p]["p_blue"], by_path[p]["p_red"]] for p in paths],
                               expected_probabilities(trained_model, paths), atol=1e-6)


def test_an_existing_output_is_refused(trained_model, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_bytes(b"x")
    assert predict_job.main(["--model", trained_model, "--input", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "already holds files" in capsys.readouterr().err
