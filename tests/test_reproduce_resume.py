"""Reproducing and resuming runs from the command line, exactly as the manual (README.md, docs/) says."""
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_IMAGE_SIZE, manual_text, tiny_config
from jobs.train import config_from_args, main as train_job, parse_args
from tl_core.run_dir import prepare_run_dir
from tl_core.model.head import OneCycle

def head_weights(run_dir: Path) -> np.ndarray:
    """Every weight of the exported model, in order (the frozen backbone's too: equal in every run anyway)."""
    model = tf.saved_model.load(str(run_dir / "model"))
    weights = [v.numpy().ravel() for v in model.model.variables if v.dtype.is_floating]
    assert len(weights) >= 4  # the default head: a hidden layer and the output layer
    return np.concatenate(weights)


@pytest.fixture
def first_run(tiny_backbone, colour_dataset, tmp_path, monkeypatch):
    """runs/X in a fresh working directory: 2 epochs with the tiny backbone."""
    monkeypatch.chdir(tmp_path)
    assert train_job(["--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size",
                      str(TINY_IMAGE_SIZE), "--batch-size", "8", "--epochs", "2", "--learning-rate", "0.05",
                      "--output-dir", "runs/X"]) == 0
    return tmp_path / "runs" / "X"


def readme_commands(flag: str) -> list[list[str]]:
    """The manual's `python -m jobs.train ...` example lines that use flag on runs/X, as argument lists."""
    lines = re.findall(r"^python -m jobs\.train (.*?)(?:\s+#.*)?$", manual_text(), flags=re.MULTILINE)
    return [shlex.split(line) for line in lines if flag in line and "runs/X" in line]


def test_the_readme_reproduce_command_gives_a_new_run_with_the_same_weights(first_run, capsys):
    [command] = readme_commands("--config")
    runs = set(first_run.parent.iterdir())
    assert train_job(command) == 0 and train_job(command) == 0  # the same command twice
    new = sorted(set(first_run.parent.iterdir()) - runs)
    assert len(new) == 2  # each into a new run directory; runs/X untouched
    for run in new:
        saved = json.loads((run / "config.json").read_text())
        assert saved["seed"] == 0 and saved["output_dir"] == str(run.relative_to(first_run.parents[1]))
        np.testing.assert_allclose(head_weights(run), head_weights(first_run), rtol=1e-5, atol=1e-6)


def test_the_readme_resume_commands_need_only_the_run_directory(first_run, capsys):
    commands = readme_commands("--resume")
    assert len(commands) == 2  # continue; continue for more epochs
    for command in commands:
        assert train_job(command) == 0, capsys.readouterr().err
    history = json.loads((first_run / "history.json").read_text())
    assert [row["epoch"] for row in history] == list(range(1, 11))  # the second command asks for 10 epochs
    # Trained longer, the added epochs run a one-cycle of their own: the rate rises again after epoch 2, then decays to 0.
    assert json.loads((first_run / "config.json").read_text())["head_cycle_ends"] == [2, 10]
    steps = 6  # 48 training images, batch 8
    # history's rate: the one of each epoch's last step
    expected = [float(OneCycle(0.05, [2 * steps, 10 * steps])(epoch * steps - 1)) for epoch in range(1, 11)]
    np.testing.assert_allclose([row["learning_rate"] for row in history], expected, rtol=1e-6, atol=1e-9)
    assert history[2]["learning_rate"] > history[1]["learning_rate"] and history[-1]["learning_rate"] < 0.05 / 100
    assert "Resumed from" in capsys.readouterr().out


def test_resume_takes_a_trailing_slash_and_names_a_differing_flag(first_run, capsys):
    assert train_job(["--resume", "--output-dir", "runs/X/", "--epochs", "3"]) == 0
    assert train_job(["--resume", "--output-dir", "runs/X", "--batch-size", "4"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[0].startswith("error: --resume: --batch-size 4 (the run has 8)") and len(error) == 1


def test_a_run_directory_moved_elsewhere_resumes_where_it_is_now(first_run, capsys):
    """The run is where its directory is: moved (or copied, as a registry's recovery does), --resume continues it
    there, and its config.json then names the new place."""
    moved = first_run.parent / "moved"
    first_run.rename(moved)
    assert train_job(["--resume", "--output-dir", "runs/moved", "--epochs", "3"]) == 0, capsys.readouterr().err
    assert [row["epoch"] for row in json.loads((moved / "history.json").read_text())] == [1, 2, 3]
    assert json.loads((moved / "config.json").read_text())["output_dir"] == "runs/moved"
    assert not first_run.exists()


def test_a_ray_run_resumes_on_ray():
    config = config_from_args(parse_args(["--ray", "--output-dir", "runs/R"]))
    assert config.ray and config.uses_ray  # saved in config.json with the run


def test_resume_never_restarts_silently(first_run, capsys):
    import shutil

    shutil.rmtree(first_run / "checkpoints")  # e.g. a Ray run's directory, or checkpoints deleted
    assert train_job(["--resume", "--output-dir", "runs/X", "--epochs", "3"]) == 2
    error = capsys.readouterr().err
    assert "completed 2 epoch(s)" in error and "no checkpoint" in error


def test_resume_removes_temporaries_at_every_depth(tiny_backbone, colour_dataset, tmp_path):
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run"))
    run = Path(config.output_dir)
    left = [run / "features" / ".worker-0.parquet.k2j4x9_a.tmp", run / "shards" / ".worker-1.json.p0q1r2s3.tmp",
            run / ".history.json.abcdefgh.tmp"]
    for path in left:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half written")
    (run / ".model.zz9y8x7w").mkdir()  # a half-written directory
    (run / "features" / "worker-0.parquet").write_bytes(b"complete")
    prepare_run_dir(config, resume=True)
    assert not [path for path in run.rglob("*") if path.name.startswith(".")]
    assert (run / "features" / "worker-0.parquet").exists()


def test_a_checkpoint_of_the_whole_model_still_resumes_into_the_head_only_state(tiny_backbone, colour_dataset, tmp_path):
    """Epoch checkpoints hold the head alone while the backbone is frozen; runs saved before that held the whole
    classifier, and --resume must still read them."""
    from tl_core.training.models import Models

    config = tiny_config(tiny_backbone, colour_dataset, tmp_path)
    saved = Models(config, tiny_backbone, 2, tf.distribute.get_strategy(), print, steps_per_epoch=3)
    path = saved.full_state().write(str(tmp_path / "old" / "state"))
    restored = Models(config, tiny_backbone, 2, tf.distribute.get_strategy(), print, steps_per_epoch=3)
    head = restored.classifier.get_layer("head")
    for weight in head.weights:
        weight.assign(tf.zeros_like(weight))
    restored.read_state(path)
    for ours, theirs in zip(head.weights, saved.classifier.get_layer("head").weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert {name.split("/")[0] for name, _ in tf.train.list_variables(saved.state.write(str(tmp_path / "new" / "state")))} \
        == {"head", "optimizer", "_CHECKPOINTABLE_OBJECT_GRAPH"}


def test_a_head_only_checkpoint_resumes_into_a_run_that_adds_fine_tuning(tiny_backbone, colour_dataset, tmp_path):
    """--resume --fine-tune-epochs N continues a run whose checkpoints held only the head (its backbone was frozen)."""
    from tl_core.training.models import Models

    strategy = tf.distribute.get_strategy()
    saved = Models(tiny_config(tiny_backbone, colour_dataset, tmp_path), tiny_backbone, 2, strategy, print, steps_per_epoch=3)
    path = saved.state.write(str(tmp_path / "head" / "state"))
    longer = Models(tiny_config(tiny_backbone, colour_dataset, tmp_path, fine_tune_epochs=1, fine_tune_layers=0),
                    tiny_backbone, 2, strategy, print, steps_per_epoch=3)
    for weight in longer.classifier.get_layer("head").weights:
        weight.assign(tf.zeros_like(weight))
    longer.read_state(path)
    for ours, theirs in zip(longer.classifier.get_layer("head").weights, saved.classifier.get_layer("head").weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())


def test_a_directory_left_by_a_start_stopped_before_its_first_file_is_no_run(tiny_backbone, colour_dataset, tmp_path):
    """Stopped while writing config.json (seen: a search's final run, interrupted as it started), a run directory
    holds only a temporary file: starting again is a new run, not a refusal to mix runs."""
    from tl_core.run_dir import RunDirectoryError
    from tl_core.tuning.search import prepare_search_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / ".config.json.ab12cd34.tmp").write_text("{")
    prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, run))
    assert sorted(path.name for path in run.iterdir()) == ["config.json"]
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / ".tune.json.x1y2z3w4.tmp").write_text("{")
    prepare_search_dir(tmp_path / "search", overwrite=False, resume=False)
    assert not list((tmp_path / "search").iterdir())
    (tmp_path / "search" / "notes.txt").write_text("a file of the user's")
    with pytest.raises(RunDirectoryError, match="already holds files"):
        prepare_search_dir(tmp_path / "search", overwrite=False, resume=False)
