"""Something that records a run: the seam between training and the tools people watch runs in.

A tracker is made where the command resolves its settings (picklable: it crosses to the Ray Train chief with the
job), then opened by train() on the chief only, which calls, in order:

  open(run_dir, config, tags, completed_epochs)  the configuration, once; tags say what the run trained on
  log_epochs(history)                             after every epoch: the rows it has not logged yet (a resumed run's
                                                  first call holds every row; each is logged once)
  log_image(tag, png, step=, split=)              a picture of the run (the fed batch, the confusion matrix)
  log_results(metrics)                            the final metrics and the exported model, in run_dir
  close(status)                                   how the run ended: FINISHED, FAILED or KILLED (Ctrl-C, SIGTERM)

Implementations: tensorboard.py (always), mlflow_run.py (with a tracking URI). A third (say, Weights & Biases) is one
new file here and one line where the command makes its trackers (jobs/cli.py: trackers_from_args).
"""
import contextlib
import hashlib
from pathlib import Path

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


class Tracker:
    """Records nothing: the methods a tracker overrides."""

    def check(self) -> None:
        """Before anything is written: raise an error the user can act on (one line) if the run could not be recorded."""

    def open(self, run_dir: Path, config, tags: dict, completed_epochs: int) -> None:
        pass

    def log_epochs(self, history: list[dict]) -> None:
        pass

    def log_image(self, tag: str, png: Path, *, step: int, split: str) -> None:
        pass

    def log_results(self, metrics: dict) -> None:
        pass

    def close(self, status: str) -> None:
        pass


class Trackers(Tracker):
    """Several trackers as one: each call goes to every one, in order."""

    def __init__(self, trackers=()):
        self.trackers = list(trackers)

    def open(self, run_dir, config, tags, completed_epochs):
        for tracker in self.trackers:
            tracker.open(run_dir, config, tags, completed_epochs)

    def log_epochs(self, history):
        for tracker in self.trackers:
            tracker.log_epochs(history)

    def log_image(self, tag, png, *, step, split):
        for tracker in self.trackers:
            tracker.log_image(tag, png, step=step, split=split)

    def log_results(self, metrics):
        for tracker in self.trackers:
            tracker.log_results(metrics)

    def close(self, status):
        for tracker in self.trackers:
            tracker.close(status)

    @contextlib.contextmanager
    def recording(self):
        """Close every tracker with the way the block ended (status_of)."""
        try:
            yield self
        except BaseException as error:
            self.close(self.status_of(error))
            raise
        self.close(FINISHED)

    @staticmethod
    def status_of(error: BaseException) -> str:
        """KILLED for Ctrl-C or SIGTERM (both raise KeyboardInterrupt: tl_core/interrupts.py), FAILED for an error."""
        return KILLED if isinstance(error, KeyboardInterrupt) else FAILED


def data_fingerprint(*sources) -> str:
    """SHA-256 of what a run trains and validates on, as listed: class names, labels and each example's file with its
    size and modification time (class folders) or each Parquet row group's rows (shards). Cheap: no image is read."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(repr(list(source.class_names)).encode())
        digest.update(source.labels.astype("int64").tobytes())
        digest.update(source.identity())
    return digest.hexdigest()
