"""The tracker seam (tl_core/tracking): what train() tells every tracker it is given, and when."""
import json

import pytest
import tensorflow as tf

from tl_core.run_dir import prepare_run_dir
from tl_core.tracking import FAILED, FINISHED, KILLED, Tracker, data_fingerprint
from tl_core.training.train import train

from conftest import tiny_config


class Recording(Tracker):
    """A third tracker, as a user would write one: it keeps every call."""

    def __init__(self):
        self.calls = []

    def open(self, run_dir, config, tags, completed_epochs):
        self.calls.append(("open", config.epochs, tags, completed_epochs))

    def log_epochs(self, history):
        self.calls.append(("epochs", [row["epoch"] for row in history]))

    def log_image(self, tag, png, *, step, split):
        self.calls.append(("image", tag, step, png.exists()))

    def log_results(self, metrics):
        self.calls.append(("results", metrics["accuracy"]))

    def close(self, status):
        self.calls.append(("close", status))


class Fails(tf.keras.callbacks.Callback):
    def __init__(self, error):
        super().__init__()
        self.error = error

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == 2:
            raise self.error


def test_train_calls_its_trackers_in_order_and_only_them(tiny_backbone, colour_dataset, tmp_path):
    tracker = Recording()
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=2))
    metrics = train(config, trackers=[tracker], tags={"submission": "raysubmit_1"})
    kinds = [call[0] for call in tracker.calls]
    assert kinds == ["open", "image", "epochs", "epochs", "image", "results", "close"]
    _, epochs, tags, completed = tracker.calls[0]
    assert (epochs, completed, tags["submission"], tags["backbone_handle"]) == (2, 0, "raysubmit_1", tiny_backbone)
    assert tags["data_dir"] == str(colour_dataset) and len(tags["data_fingerprint"]) == 64
    assert {"version.tensorflow", "version.tf_keras", "version.tensorflow_hub"} <= set(tags)
    assert tracker.calls[1] == ("image", "augmented_batch", 0, True) and tracker.calls[4] == ("image", "confusion_matrix", 2, True)
    assert tracker.calls[2:4] == [("epochs", [1]), ("epochs", [1, 2])]
    assert tracker.calls[5:] == [("results", metrics["accuracy"]), ("close", FINISHED)]
    assert not (tmp_path / "run" / "tensorboard").exists()  # the trackers given replace the default


@pytest.mark.parametrize("error, status", [(KeyboardInterrupt(), KILLED), (OSError("disk full"), FAILED)])
def test_a_stopped_or_failed_run_closes_its_trackers_with_how_it_ended(tiny_backbone, colour_dataset, tmp_path, error,
                                                                     status):
    tracker = Recording()
    config = prepare_run_dir(tiny_config(tiny_backbone, colour_dataset, tmp_path / "run", "default", epochs=3))
    with pytest.raises(type(error)):
        train(config, trackers=[tracker], callbacks=[Fails(error)])
    assert tracker.calls[-1] == ("close", status) and "results" not in [call[0] for call in tracker.calls]
    resumed = Recording()
    train(config, trackers=[resumed])  # continues from epoch 2's checkpoint: the rows so far, then the new one
    assert resumed.calls[0][3] == 2 and resumed.calls[2] == ("epochs", [1, 2, 3])
    assert json.loads((tmp_path / "run" / "history.json").read_text())[-1]["epoch"] == 3


def test_the_data_fingerprint_changes_with_what_the_run_trains_on(colour_dataset, tmp_path):
    from tl_core.data.images import list_image_folder

    train_images = list_image_folder(str(colour_dataset / "train"))
    validation = list_image_folder(str(colour_dataset / "validation"))
    before = data_fingerprint(train_images, validation)
    assert before == data_fingerprint(list_image_folder(str(colour_dataset / "train")), validation)
    assert before != data_fingerprint(train_images.select(range(1, len(train_images))), validation)
    assert before != data_fingerprint(validation, train_images)
