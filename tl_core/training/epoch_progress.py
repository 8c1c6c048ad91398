"""Progress within each epoch, as a Keras callback: images done, images/s, the running loss and accuracy,
the time left in the epoch and in the run (a bar on a terminal, a line every 15 s in a log; tl_core/progress.py)."""
import tensorflow as tf

from tl_core.progress import Progress, format_duration


class EpochProgress(tf.keras.callbacks.Callback):
    def __init__(self, *, images_per_epoch: int, global_batch: int, epochs: int, fine_tune_epochs: int, stream=None):
        super().__init__()
        self._supports_tf_logs = True  # the running loss stays a tensor until a line is drawn: no sync per step
        self.images_per_epoch, self.global_batch, self.stream = images_per_epoch, global_batch, stream
        self.epochs, self.fine_tune_epochs = epochs, fine_tune_epochs
        self.progress = None

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.fine_tune_epochs

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.progress = Progress(self.images_per_epoch, f"epoch {epoch + 1}/{self.total_epochs}", stream=self.stream,
                                 after=self.run_left)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        figures = {name: logs[name] for name in ("loss", "accuracy") if name in logs}
        self.progress.update((batch + 1) * self.global_batch, **figures)

    def on_epoch_end(self, epoch, logs=None):
        self.progress.close()

    def run_left(self, epoch_left: float) -> str:
        """The time left in the run: later epochs of this phase at this epoch's pace; the other phase's
        epochs (the backbone's top trains far slower than a head on cached features) are only counted."""
        in_head = self.epoch < self.epochs
        same_phase = (self.epochs if in_head else self.total_epochs) - self.epoch - 1
        epoch_seconds = self.progress.clock() - self.progress.started + epoch_left
        text = f"(run {format_duration(epoch_left + same_phase * epoch_seconds)}"
        if in_head and self.fine_tune_epochs:
            text += f" + {self.fine_tune_epochs} fine-tuning epochs"
        return text + ")"
