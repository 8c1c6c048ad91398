"""A run's TensorBoard event files: <run>/tensorboard/train and <run>/tensorboard/validation.

Laid out as Keras' own TensorBoard callback does (the same `epoch_loss` and `epoch_accuracy` tags
in both, so TensorBoard overlays training and validation): per epoch, the training and validation
loss and accuracy, and in train/ the learning rate, images per second and the phase (0 head, 1
fine-tuning); once, the configuration as text, the first training batch as the model receives it
and the confusion matrix as images. Written by the chief only.

A resumed run appends new event files to the same directories. What the files already hold is read
back first, so no epoch and no one-off item is written twice. Every start of the process writes
TensorFlow's own restart marker, a SessionLog.START event, at the first epoch it will log: on a
restart TensorBoard drops what the files hold from that step on. That matters when they hold epochs
past the checkpoint the run continues from (a checkpoint lost on Ray): those epochs are trained and
logged again, and TensorBoard shows each step once.

The tracker (tl_core/tracking/__init__.py) every run has: TensorBoard(); opened on the chief.
"""
import time
from pathlib import Path

import tensorflow as tf

from tl_core.run_dir import TENSORBOARD_DIR
from tl_core.tracking import Tracker
from tl_core.config import FINE_TUNE, HEAD

TRAIN, VALIDATION = "train", "validation"
PHASE_NUMBERS = {HEAD: 0, FINE_TUNE: 1}
TRAIN_SCALARS = {"epoch_loss": "loss", "epoch_accuracy": "accuracy", "epoch_learning_rate": "learning_rate",
                 "epoch_images_per_second": "images_per_second"}
VALIDATION_SCALARS = {"epoch_loss": "val_loss", "epoch_accuracy": "val_accuracy",
                      "epoch_balanced_accuracy": "val_balanced_accuracy", "epoch_macro_f1": "val_macro_f1"}


def write_event(writer, event: tf.compat.v1.Event) -> None:
    """A raw Event into a tf.summary writer's file. tf.summary's public API writes summaries only, not the SessionLog
    restart marker; TensorFlow's private import_event does (tests/test_watching.py fails loudly if an upgrade removes
    it)."""
    # TensorFlow's private API, imported where used: an upgrade that removes it breaks this function, not every import
    # of this module.
    from tensorflow.python.ops.summary_ops_v2 import import_event

    with writer.as_default():
        import_event(tf.constant(event.SerializeToString()))


def logged_steps(directory: Path) -> dict[str, int]:
    """tag -> the highest step the event files under directory hold (a torn last record is ignored)."""
    steps = {}
    for path in sorted(Path(directory).glob("events.out.tfevents.*")):
        try:
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    steps[value.tag] = max(steps.get(value.tag, -1), event.step)
        except tf.errors.DataLossError:  # a process killed while writing its last event
            pass
    return steps


def wait_for_a_later_second(directory: Path) -> None:
    """tf.summary names a file events.out.tfevents.<seconds>.<host>.<pid>.<n>, and TensorBoard reads a directory's
    files in name order: within one second that is not the order they were written in (n 10 sorts before n 9; seen
    as a flaky test), and a restart marker read out of order drops the wrong epochs. So a new file is begun in a
    later second than every file there (a wait only when the last one was begun this very second)."""
    newest = max((int(path.name.split(".")[3]) for path in Path(directory).glob("events.out.tfevents.*")
                  if path.name.split(".")[3].isdigit()), default=0)
    while time.time() < newest + 1:
        time.sleep(0.05)


class TensorBoard(Tracker):
    def open(self, run_dir: str | Path, config, tags: dict, completed_epochs: int) -> None:
        """completed_epochs: the epochs of the checkpoint the run continues from (0 for a new run)."""
        self.directory = Path(run_dir) / TENSORBOARD_DIR
        self.logged = {name: logged_steps(self.directory / name) for name in (TRAIN, VALIDATION)}
        # An epoch counts as logged when every one of its scalars is (a process stopped while writing one leaves a part).
        per_epoch = [(TRAIN, tag) for tag in [*TRAIN_SCALARS, "epoch_phase"]] + [(VALIDATION, tag) for tag in
                                                                                   ("epoch_loss", "epoch_accuracy")]
        self.logged_epochs = min([self.logged[split].get(tag, 0) for split, tag in per_epoch] + [completed_epochs])
        for name in (TRAIN, VALIDATION):
            wait_for_a_later_second(self.directory / name)
        self.writers = {name: tf.summary.create_file_writer(str(self.directory / name)) for name in (TRAIN, VALIDATION)}
        self.restart_at(self.logged_epochs + 1)
        if config is not None:
            self.text_once("config", config_markdown(config.describe()))

    def restart_at(self, step: int) -> None:
        """Mark that the run (re)starts at `step`: TensorBoard drops what the files hold from there on (the
        first marker of a run only starts it)."""
        restart = tf.compat.v1.Event(step=step, wall_time=time.time(),
                                     session_log=tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START))
        for name, writer in self.writers.items():
            write_event(writer, restart)
            self.logged[name] = {tag: last for tag, last in self.logged[name].items() if last < step}
        self.flush()

    def log_epochs(self, history: list[dict]) -> None:
        """The scalars of every epoch of history not yet in the files."""
        for row in history[self.logged_epochs:]:
            with self.writers[TRAIN].as_default(step=row["epoch"]):
                for tag, key in TRAIN_SCALARS.items():
                    tf.summary.scalar(tag, row[key])
                tf.summary.scalar("epoch_phase", PHASE_NUMBERS[row["phase"]], description="0: head, 1: fine-tuning")
            with self.writers[VALIDATION].as_default(step=row["epoch"]):
                for tag, key in VALIDATION_SCALARS.items():
                    if key in row:  # a run resumed from a version before balanced accuracy has epochs without it
                        tf.summary.scalar(tag, row[key])
            self.logged_epochs = row["epoch"]
        self.flush()

    def text_once(self, tag: str, text: str) -> None:
        if tag not in self.logged[TRAIN]:
            with self.writers[TRAIN].as_default(step=0):
                tf.summary.text(tag, text)
            self.logged[TRAIN][tag] = 0
            self.flush()

    def log_image(self, tag: str, png: Path, *, step: int, split: str = TRAIN) -> None:
        """A PNG file as an image summary, unless the files already hold this tag at this step or later."""
        if self.logged[split].get(tag, -1) < step:
            image = tf.io.decode_png(Path(png).read_bytes(), channels=3)
            with self.writers[split].as_default(step=step):
                tf.summary.image(tag, image[tf.newaxis])
            self.logged[split][tag] = step
            self.flush()

    def flush(self) -> None:
        for writer in self.writers.values():
            writer.flush()

    def close(self, status: str) -> None:
        for writer in self.writers.values():
            writer.close()


def config_markdown(described: str) -> str:
    """TrainConfig.describe()'s lines as a Markdown code block (TensorBoard's text tab renders Markdown)."""
    return "\n".join("    " + line.strip() for line in described.splitlines())
