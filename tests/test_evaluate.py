"""jobs.evaluate on a model whose every prediction is known in advance."""
import json

import numpy as np
import tensorflow as tf

from conftest import encode
from jobs import evaluate as evaluate_job
from tl_core.config import TrainConfig
from tl_core.serving.export import export_classifier


def colour_model(path):
    """Logits (blue - red, red - blue) of the mean colour: a model whose answers can be worked out by hand."""
    model = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.GlobalAveragePooling2D(),
                                 tf.keras.layers.Dense(2)])
    model.layers[-1].set_weights([np.array([[-10.0, 10.0], [0.0, 0.0], [10.0, -10.0]]), np.zeros(2)])
    export_classifier(model, ["blue", "red"], 8, path)


def write(folder, name, rgb):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(encode(np.full((8, 8, 3), rgb, np.uint8), "PNG"))


def test_evaluate_matches_a_hand_computed_confusion_matrix(tmp_path, capsys):
    colour_model(tmp_path / "model")
    data = tmp_path / "data"
    write(data / "blue", "b1.png", (0, 0, 255))
    write(data / "blue", "b2.png", (20, 0, 200))
    write(data / "blue", "looks_red.png", (250, 0, 10))  # labelled blue, predicted red with confidence ~1
    write(data / "blue", "leans_red.png", (140, 0, 110))  # labelled blue, predicted red less confidently
    for i in range(3):
        write(data / "red", f"r{i}.png", (255 - 10 * i, 0, 0))
    (data / "red" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # left out and listed, not fatal
    out = tmp_path / "eval"
    assert evaluate_job.main(["--model", str(tmp_path / "model"), "--data-dir", str(data),
                              "--output-dir", str(out), "--worst", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["confusion_matrix"] == [[2, 2], [0, 3]]  # rows: true blue, true red
    assert metrics["accuracy"] == 5 / 7 and metrics["num_examples"] == 7
    per_class = {row["class"]: row for row in metrics["per_class"]}
    assert per_class["blue"]["recall"] == 0.5 and per_class["red"]["precision"] == 3 / 5
    assert [row["image"] for row in metrics["most_confident_errors"]] == ["looks_red.png"]
    assert len(metrics["left_out"]) == 1 and "broken.png" in metrics["left_out"][0]
    for plot in ("confusion_matrix.png", "most_confident_errors.png"):
        assert (out / plot).read_bytes().startswith(b"\x89PNG")
    assert "blue" in capsys.readouterr().out


def test_evaluate_refuses_classes_the_model_does_not_know(tmp_path, capsys):
    colour_model(tmp_path / "model")
    write(tmp_path / "data" / "green", "g.png", (0, 255, 0))
    write(tmp_path / "data" / "red", "r.png", (255, 0, 0))
    assert evaluate_job.main(["--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"),
                              "--output-dir", str(tmp_path / "eval")]) == 2
    assert "classes ['green'] that the model does not know" in capsys.readouterr().err


def test_evaluate_and_predict_refuse_a_savedmodel_this_project_did_not_export_in_one_line(tmp_path, capsys):
    from jobs import predict as predict_job

    foreign = tf.keras.Sequential([tf.keras.Input((8, 8, 3)), tf.keras.layers.GlobalAveragePooling2D()])
    tf.saved_model.save(foreign, str(tmp_path / "foreign"))  # a plain Keras SavedModel: no class names, no image size
    write(tmp_path / "data" / "red", "r.png", (255, 0, 0))
    assert evaluate_job.main(["--model", str(tmp_path / "foreign"), "--data-dir", str(tmp_path / "data"),
                              "--output-dir", str(tmp_path / "eval")]) == 2
    assert predict_job.main(["--model", str(tmp_path / "foreign"), "--input", str(tmp_path / "data"),
                             "--output", str(tmp_path / "predictions")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line == f"error: {tmp_path / 'foreign'} is a SavedModel this project did not export "
                                   "(it has no class_names and no image_size): give a run directory or its model/ "
                                   "(`python -m jobs.train` exports one)" for line in lines), lines
    assert not (tmp_path / "eval").exists() and not (tmp_path / "predictions").exists()


def test_evaluate_and_audit_never_write_into_a_run_nor_into_files_they_were_not_told_to_replace(tmp_path, capsys):
    from jobs import audit as audit_job

    colour_model(tmp_path / "model")
    write(tmp_path / "data" / "blue", "b.png", (0, 0, 255))
    write(tmp_path / "data" / "red", "r.png", (255, 0, 0))
    run = tmp_path / "run"  # a training run's directory: its metrics.json is what retraining reads
    run.mkdir()
    (run / "config.json").write_text(json.dumps(TrainConfig().to_dict()))
    (run / "metrics.json").write_text('{"accuracy": 0.9}')
    used = tmp_path / "used"
    used.mkdir()
    (used / "notes.txt").write_text("the user's own file")
    before = {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()}
    evaluating = ["--model", str(tmp_path / "model"), "--data-dir", str(tmp_path / "data"), "--quiet"]
    auditing = ["--data-dir", str(tmp_path / "data"), "--exact-only", "--quiet"]
    for command, flags in ((evaluate_job, evaluating), (audit_job, auditing)):
        for output in (run, used):
            for overwrite in ([], ["--overwrite"]) if output == run else ([],):
                assert command.main([*flags, "--output-dir", str(output), *overwrite]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "is a training run's directory" in err[0] and "already holds files; pass --overwrite" in err[-1], err
    assert {path: path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()} == before
    assert evaluate_job.main([*evaluating, "--output-dir", str(used), "--overwrite"]) == 0
    assert (used / "metrics.json").exists() and (used / "notes.txt").exists()
