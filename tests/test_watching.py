"""What a user watches: progress output (bounded in a log), TensorBoard event files, the fed batch picture."""
import io
import json
from pathlib import Path

import pytest

from conftest import TINY_IMAGE_SIZE, assert_tensorboard_matches_history, read_tensorboard, tiny_config
from tl_core import progress
from tl_core.progress import LOG_INTERVAL, Progress, format_duration
from tl_core.run_dir import prepare_run_dir
from tl_core.training.epoch_progress import EpochProgress
from tl_core.tracking.tensorboard import TensorBoard
from tl_core.training.train import train


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def run_for(seconds: float, step: float, *, interactive: bool, total: int = 10**6, **options) -> str:
    """Output of a Progress updated every `step` seconds of a fake clock for `seconds`."""
    clock, stream = FakeClock(), io.StringIO()
    with Progress(total, "epoch 1/6", stream=stream, clock=clock, interactive=interactive, **options) as bar:
        done = 0
        while clock.now < 1000.0 + seconds:
            clock.now += step
            done += 7
            bar.update(done, loss=0.5, accuracy=0.75)
    return stream.getvalue()


def test_a_log_gets_a_plain_line_at_most_every_interval():
    output = run_for(600, 0.05, interactive=False)  # ten minutes of steps 20 times a second
    lines = output.splitlines()
    assert "\r" not in output and "\033" not in output
    assert 600 / LOG_INTERVAL - 1 <= len(lines) <= 600 / LOG_INTERVAL  # 40: at most 4 lines a minute
    assert 10 <= LOG_INTERVAL <= 30
    first = lines[0]
    assert first.startswith("epoch 1/6: 2107/1000000 images (0%), 140 images/s, loss 0.5000, accuracy 0.7500, ")
    assert first.endswith("left")


def test_short_work_prints_nothing_in_a_log():
    assert run_for(LOG_INTERVAL - 1, 0.05, interactive=False) == ""


def test_a_terminal_gets_a_bar_redrawn_in_place_and_cleared():
    output = run_for(5, 0.05, interactive=True, total=2000)
    assert output.count("\n") == 0 and output.count("\r") > 10
    assert "epoch 1/6 [" in output and "images/s" in output
    assert output.endswith("\r\033[K")  # close() leaves the line empty for the epoch's summary


def test_quiet_prints_nothing():
    progress.set_quiet(True)
    try:
        assert run_for(600, 0.5, interactive=False) == "" and run_for(5, 0.05, interactive=True) == ""
    finally:
        progress.set_quiet(False)


def test_time_left_in_the_run_counts_the_epochs_after_this_one():
    callback = EpochProgress(images_per_epoch=1000, global_batch=100, epochs=6, fine_tune_epochs=2, stream=io.StringIO())
    callback.on_epoch_begin(1)  # the second of 6 head epochs
    callback.progress.clock = FakeClock()
    callback.progress.started = callback.progress.clock.now - 10  # 10 s in, 10 s left: 20 s per epoch
    assert callback.run_left(10) == "(run 1m30s + 2 fine-tuning epochs)"  # 10 s + 4 epochs x 20 s
    assert format_duration(3725) == "1h02m"


@pytest.fixture(scope="module")
def watched_run(tiny_backbone, colour_dataset, tmp_path_factory):
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path_factory.mktemp("watched") / "run",
                                         epochs=2, fine_tune_epochs=1, fine_tune_layers=0))
    train(config)
    return Path(config.output_dir)


def test_tensorboard_holds_every_epoch_and_the_one_off_items(watched_run):
    assert_tensorboard_matches_history(watched_run)
    train_board = read_tensorboard(watched_run / "tensorboard" / "train")
    validation_board = read_tensorboard(watched_run / "tensorboard" / "validation")
    assert [step for step, _ in train_board["config"]] == [0]
    assert "learning_rate" in train_board["config"][0][1].item().decode()
    width, height, png = train_board["augmented_batch"][0][1]
    assert png.startswith(b"\x89PNG") and int(width) > 0
    assert [step for step, _ in validation_board["confusion_matrix"]] == [3]
    assert [int(value) for _, value in train_board["epoch_phase"]] == [0, 0, 1]


def test_the_fed_batch_picture_is_written(watched_run):
    data = (watched_run / "augmented_batch.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_tensorboard_after_a_resume_has_no_duplicate_steps(tiny_backbone, colour_dataset, tmp_path):
    partial = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", epochs=2))
    train(partial)
    resumed = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", epochs=4), resume=True)
    train(resumed)
    assert len(list((tmp_path / "run" / "tensorboard" / "train").glob("events.out.tfevents.*"))) == 2  # appended
    assert_tensorboard_matches_history(tmp_path / "run")
    board = read_tensorboard(tmp_path / "run" / "tensorboard" / "train")
    assert len(board["config"]) == len(board["augmented_batch"]) == 1


def opened(run_dir, completed_epochs):
    board = TensorBoard()
    board.open(run_dir, None, {}, completed_epochs)
    return board


def test_epochs_logged_past_a_lost_checkpoint_are_replaced(tmp_path):
    def rows(count, loss):
        return [{"epoch": epoch, "phase": "head", "loss": loss, "accuracy": 0.5, "learning_rate": 1e-3,
                 "images_per_second": 100.0, "val_loss": loss, "val_accuracy": 0.5} for epoch in range(1, count + 1)]

    opened(tmp_path, 0).log_epochs(rows(3, loss=1.0))
    # The run continues from a checkpoint of epoch 2 (epoch 3's was lost): epochs 3 and 4 are written again.
    opened(tmp_path, 2).log_epochs(rows(4, loss=2.0))
    losses = read_tensorboard(tmp_path / "tensorboard" / "train")["epoch_loss"]
    assert [(step, float(value)) for step, value in losses] == [(1, 1.0), (2, 1.0), (3, 2.0), (4, 2.0)]


def test_each_start_writes_tensorboards_restart_marker_through_one_private_function(tmp_path):
    """TensorBoard drops what the files hold from a SessionLog.START's step on. tf.summary cannot write that event:
    tracking/tensorboard.py's write_event uses TensorFlow's private import_event, imported there alone; this test fails loudly
    if an upgrade removes it."""
    import ast

    import tensorflow as tf

    from tl_core.tracking import tensorboard

    rows = [{"epoch": epoch, "phase": "head", "loss": 1.0, "accuracy": 0.5, "learning_rate": 1e-3, "images_per_second": 1.0,
             "val_loss": 1.0, "val_accuracy": 0.5} for epoch in (1, 2)]
    opened(tmp_path, 0).log_epochs(rows)
    opened(tmp_path, 2)  # the run resumed after epoch 2
    starts = [event.step for path in sorted((tmp_path / "tensorboard" / "train").glob("events.out.tfevents.*"))
              for event in tf.compat.v1.train.summary_iterator(str(path))
              if event.HasField("session_log") and event.session_log.status == tf.compat.v1.SessionLog.START]
    assert starts == [1, 3]
    module = ast.parse(Path(tensorboard.__file__).read_text())
    top_level = [node.module for node in module.body if isinstance(node, ast.ImportFrom)]
    assert not [name for name in top_level if name.startswith("tensorflow.python")]  # a TF upgrade cannot break the import


def test_an_epoch_logged_in_part_is_logged_again_whole(tmp_path):
    import tensorflow as tf

    row = {"epoch": 1, "phase": "head", "loss": 1.0, "accuracy": 0.5, "learning_rate": 1e-3, "images_per_second": 100.0,
           "val_loss": 1.0, "val_accuracy": 0.5}
    opened(tmp_path, 0).log_epochs([row])
    # A process stopped while writing epoch 2: only its training loss reached the file.
    with tf.summary.create_file_writer(str(tmp_path / "tensorboard" / "train")).as_default(step=2):
        tf.summary.scalar("epoch_loss", 0.25)
    opened(tmp_path, 2).log_epochs([row, {**row, "epoch": 2, "loss": 0.75, "accuracy": 0.625}])
    board = read_tensorboard(tmp_path / "tensorboard" / "train")
    assert [(step, float(value)) for step, value in board["epoch_loss"]] == [(1, 1.0), (2, 0.75)]
    assert [step for step, _ in board["epoch_accuracy"]] == [1, 2]


def test_show_batch_writes_the_picture_and_no_run(tiny_backbone, colour_dataset, tmp_path, capsys):
    from jobs import train as train_job

    picture, run_dir = tmp_path / "batch.png", tmp_path / "never"
    status = train_job.main(["--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size",
                             str(TINY_IMAGE_SIZE), "--batch-size", "8", "--show-batch", str(picture),
                             "--output-dir", str(run_dir)])
    assert status == 0
    assert picture.read_bytes().startswith(b"\x89PNG") and not run_dir.exists()
    assert "Nothing was trained" in capsys.readouterr().out


def test_a_run_in_a_log_prints_one_line_per_event(tiny_backbone, colour_dataset, tmp_path, capsys):
    from jobs import train as train_job

    args = ["--data-dir", str(colour_dataset), "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
            "--batch-size", "8", "--epochs", "2", "--seed", "3"]
    assert train_job.main([*args, "--output-dir", str(tmp_path / "a")]) == 0
    output = capsys.readouterr().out
    assert "\r" not in output and output.count("epoch   1/2") == 1 and "Configuration:" in output
    assert train_job.main([*args, "--output-dir", str(tmp_path / "b"), "--quiet"]) == 0
    quiet = capsys.readouterr().out
    assert "Configuration:" not in quiet and "config.json" in quiet and quiet.count("epoch   2/2") == 1
    assert json.loads((tmp_path / "a" / "history.json").read_text())[-1]["epoch"] == 2


def test_a_new_event_file_is_begun_in_a_later_second_than_the_files_before_it(tmp_path):
    """TensorBoard reads event files in name order, and tf.summary's names within one second end in a counter that
    sorts as text (10 before 9): a file begun in the same second as an earlier one could be read first."""
    import os
    import socket
    import time

    import tensorflow as tf

    from tl_core.tracking.tensorboard import wait_for_a_later_second

    now = int(time.time())
    earlier = f"events.out.tfevents.{now}.{socket.gethostname()}.{os.getpid()}.99.v2"
    (tmp_path / earlier).write_bytes(b"")
    wait_for_a_later_second(tmp_path)
    writer = tf.summary.create_file_writer(str(tmp_path))
    writer.flush()
    names = sorted(path.name for path in tmp_path.iterdir())
    assert len(names) == 2 and names[0] == earlier
