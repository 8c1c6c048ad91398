"""Scheduled retraining: champion and challenger, a ledger, a lock, recovery and rollback."""
import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from conftest import ANY_CHALLENGER, TINY_IMAGE_SIZE, colour_image, encode, write_colour_dataset, tiny_config
from jobs import registry as registry_job
from tl_core.config import TrainConfig
from tl_core.registry.store import Registry, RegistryBusy, RegistryError, format_ledger
from tl_core.registry.promotion import PromotionRule, decide
from tl_core.registry.retrain import restore, retrain

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_colour_dataset(tmp_path / "data", {"train": 24, "validation": 10})


def config_for(data_dir, tiny_backbone) -> TrainConfig:
    return tiny_config(tiny_backbone, data_dir)


def quiet(*args, **kwargs):
    pass


def tree_digest(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def add_images(data: Path, count: int = 4, seed: int = 9):
    rng = np.random.default_rng(seed)
    for i in range(count):
        (data / "train" / "red" / f"new_{seed}_{i}.png").write_bytes(encode(colour_image(rng, 0, 30, 30), "PNG"))


def test_first_run_promotes_unchanged_data_skips_new_data_retrains(data, tiny_backbone, tmp_path):
    config, root = config_for(data, tiny_backbone), tmp_path / "registry"
    first = retrain(config, root, log=quiet)
    assert first["action"] == "promoted" and first["reason"] == "no champion yet"
    assert Registry(root).champion() == first["run_id"] and first["challenger_accuracy"] >= 0.9
    serve = tf.saved_model.load(str(root / "champion" / "model")).signatures["serving_default"]
    assert serve(images=tf.zeros([1, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3]))["probabilities"].shape == (1, 2)

    # Each challenger's TensorBoard logs are under the registry: `tensorboard --logdir <registry>` shows them all.
    assert list((root / "models" / first["run_id"] / "tensorboard" / "train").glob("events.out.tfevents.*"))

    second = retrain(config, root, log=quiet)
    assert second["action"] == "skipped" and first["run_id"] in second["reason"]
    assert not (root / "models" / second["run_id"]).exists()

    add_images(data)
    lines = []
    third = retrain(config, root, log=lambda *args, **kwargs: lines.extend(map(str, args)))
    assert third["data_fingerprint"] != first["data_fingerprint"]
    # The check remembered the first run's verdicts: only the 4 new files were decoded.
    assert any("checked: 4 decoded; 68 unchanged since their last check" in line for line in lines), lines
    assert third["champion_accuracy"] == pytest.approx(first["challenger_accuracy"])  # same held-out split
    # Both classify the separable held-out split perfectly: no gain of min_improvement, so no promotion.
    assert third["challenger_accuracy"] == third["champion_accuracy"] == 1.0
    assert third["action"] == "rejected" and "< required +0.0100" in third["reason"]
    # No image changes sides: p 1; 10 held-out images per class are too few to gate a class (--min-class-images 20).
    assert (third["p_value"], third["worst_class"], third["promote_metric"]) == (1.0, None, "balanced_accuracy")
    assert third["challenger_balanced_accuracy"] == third["champion_macro_f1"] == 1.0
    ledger = pq.read_table(root / "ledger.parquet")  # pyarrow alone reads the ledger
    assert ledger.column("action").to_pylist() == ["promoted", "skipped", "rejected"]
    assert third["train_images"] == 52


def test_a_worse_challenger_is_rejected_and_the_champion_is_untouched(data, tiny_backbone, tmp_path):
    config, root = config_for(data, tiny_backbone), tmp_path / "registry"
    champion = retrain(config, root, log=quiet)["run_id"]
    before = tree_digest(root / "champion")
    # Swap the training labels: the challenger learns the opposite of the truth.
    train = data / "train"
    (train / "red").rename(train / "tmp")
    (train / "blue").rename(train / "red")
    (train / "tmp").rename(train / "blue")
    record = retrain(config, root, log=quiet)
    assert record["action"] == "rejected"
    assert record["challenger_accuracy"] < 0.5 < record["champion_accuracy"]
    assert "vs champion" in record["reason"]
    assert Registry(root).champion() == champion and tree_digest(root / "champion") == before


def test_a_crash_before_the_switch_keeps_the_champion_and_the_next_run_recovers(data, tiny_backbone, tmp_path,
                                                                               monkeypatch):
    config, root = config_for(data, tiny_backbone), tmp_path / "registry"
    champion = retrain(config, root, log=quiet)["run_id"]
    add_images(data)

    def crash(self, run_id):
        raise RuntimeError("injected crash between writing the challenger and switching the champion")

    monkeypatch.setattr(Registry, "promote", crash)
    with pytest.raises(RuntimeError, match="injected crash"):
        retrain(config, root, rule=ANY_CHALLENGER, log=quiet)
    monkeypatch.undo()
    registry = Registry(root)
    pending = registry.pending()["run_id"]
    assert registry.champion() == champion and len(registry.records()) == 1
    assert (root / "models" / pending / "model" / "saved_model.pb").exists()  # the challenger was written

    lines = []
    record = retrain(config, root, rule=ANY_CHALLENGER, log=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any(line.startswith(f"Recovering run {pending}") for line in lines)
    assert record["run_id"] == pending and record["action"] == "promoted"
    assert registry.champion() == pending and registry.pending() is None


def test_a_second_run_is_refused_and_a_dead_holders_lock_is_recovered(data, tiny_backbone, tmp_path):
    root = tmp_path / "registry"
    assert retrain(config_for(data, tiny_backbone), root, log=quiet)["action"] == "promoted"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from tl_core.registry.store import Registry
        with Registry({str(root)!r}).lock():
            print("locked", flush=True)
            time.sleep(600)
    """)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RegistryBusy, match=f"pid {holder.pid} on "):
            retrain(config_for(data, tiny_backbone), root, log=quiet)
        assert registry_job.main(["rollback", "x", "--registry", str(root)]) == 3
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait(timeout=30)
    assert retrain(config_for(data, tiny_backbone), root, log=quiet)["action"] == "skipped"  # the same data: it ran


def test_list_and_rollback_on_a_mistyped_registry_say_so_and_make_nothing(tmp_path, capsys):
    for command in (["list"], ["rollback", "some-run"]):
        assert registry_job.main([*command, "--registry", str(tmp_path / "regsitry")]) == 2
        assert capsys.readouterr().err.strip() == (f"error: no registry at {tmp_path / 'regsitry'} (no ledger.parquet): "
                                                   "check --registry; `python -m jobs.retrain --registry ...` makes one")
    assert not list(tmp_path.iterdir())


def test_rollback_restores_an_earlier_champion(data, tiny_backbone, tmp_path, capsys):
    config, root = config_for(data, tiny_backbone), tmp_path / "registry"
    first = retrain(config, root, log=quiet)["run_id"]
    add_images(data)
    second = retrain(config, root, rule=ANY_CHALLENGER, log=quiet)["run_id"]  # promoted whatever it scores
    assert Registry(root).champion() == second
    assert registry_job.main(["rollback", first, "--registry", str(root)]) == 0
    assert Registry(root).champion() == first
    assert Registry(root).records()[-1]["action"] == "rollback"
    with pytest.raises(RegistryError, match="no trained run 'nope'"):
        restore(root, "nope", log=quiet)
    capsys.readouterr()
    assert registry_job.main(["list", "--registry", str(root)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run_id", "finished_at", "action"]
    assert [line.split()[2] for line in table[1:4]] == ["promoted", "promoted", "rollback"]
    assert table[-1].startswith(f"champion: {first}")


def test_a_registry_copied_with_cp_r_is_refused_in_one_line_with_its_repair_and_the_repair_works(
        data, tiny_backbone, tmp_path, capsys):
    import shutil

    from jobs import retrain as retrain_job

    config, root, copy = config_for(data, tiny_backbone), tmp_path / "registry", tmp_path / "copy"
    champion = retrain(config, root, log=quiet)["run_id"]
    shutil.copytree(root, copy, symlinks=False)  # as `cp -r` does: the champion link becomes a directory
    before = tree_digest(copy)
    flags = ["--data-dir", str(data), "--backbone", tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE),
             "--batch-size", "8", "--epochs", "2", "--cache-dir", str(tmp_path / "cache"), "--force", "--quiet"]
    assert retrain_job.main(["--registry", str(copy), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    repair = f"rm -r {copy / 'champion'} && ln -s models/{champion} {copy / 'champion'}"
    assert len(err) == 1 and err[0].endswith(repair), err
    assert tree_digest(copy) == before  # nothing trained, nothing written
    assert registry_job.main(["list", "--registry", str(copy)]) == 2
    subprocess.run(repair, shell=True, check=True, timeout=60)
    assert Registry(copy).champion() == champion


def test_old_models_are_pruned_but_the_champion_is_kept(data, tiny_backbone, tmp_path):
    config, root = config_for(data, tiny_backbone), tmp_path / "registry"
    champion = retrain(config, root, keep=1, log=quiet)["run_id"]
    for seed in (1, 2):
        add_images(data, seed=seed)
        retrain(config, root, keep=1, rule=PromotionRule(min_improvement=1.0), log=quiet)  # rejected: nothing gains a whole 1.0
    registry = Registry(root)
    assert registry.champion() == champion
    assert len(registry.model_runs()) == 2  # the champion and the newest
    assert champion in registry.model_runs()


def held_out(right_per_class: list[list[bool]], classes=("a", "b", "c")):
    """(metrics, right) of a model on a held-out set given, per class, which of its images the model gets right (a
    wrong image is predicted as the next class)."""
    from tl_core.metrics import classification_metrics

    labels = np.concatenate([[k] * len(rights) for k, rights in enumerate(right_per_class)])
    right = np.concatenate(right_per_class).astype(bool)
    predicted = np.where(right, labels, (labels + 1) % len(right_per_class))
    return classification_metrics(labels, np.eye(len(right_per_class))[predicted], list(classes)[:len(right_per_class)]), right


def decision(challenger, champion, rule=PromotionRule()):
    (chall, chall_right), (champ, champ_right) = challenger, champion
    return decide(chall, champ, rule, challenger_right=chall_right, champion_right=champ_right)


def test_the_first_run_is_promoted():
    metrics, right = held_out([[True] * 9 + [False]] * 2, ("a", "b"))
    assert decide(metrics, None, PromotionRule(), challenger_right=right).reason == "no champion yet"


def test_a_small_gain_within_noise_is_rejected_with_its_p_value():
    # 100 images: the challenger gets 6 right that the champion misses and misses 5 it got: +0.01, p about 0.5.
    champion = held_out([[True] * 45 + [False] * 5, [True] * 45 + [False] * 5], ("a", "b"))
    challenger = held_out([[False] * 5 + [True] * 40 + [True] * 5, [True] * 46 + [False] * 4], ("a", "b"))
    assert challenger[0]["accuracy"] - champion[0]["accuracy"] == pytest.approx(0.01)
    result = decision(challenger, champion, PromotionRule(metric="accuracy"))
    assert not result.promote and "not better beyond chance" in result.reason and 0.3 < result.p_value < 0.7
    assert "6 image(s) right only by the challenger, 5 only by the champion" in result.reason


def test_a_better_challenger_that_loses_a_class_is_rejected_naming_it():
    champion = held_out([[True] * 27 + [False] * 3] * 3)
    challenger = held_out([[True] * 30, [True] * 30, [True] * 24 + [False] * 6])
    assert challenger[0]["balanced_accuracy"] > champion[0]["balanced_accuracy"] + 0.03
    result = decision(challenger, champion, PromotionRule(significance=1.0))
    assert not result.promote and result.worst_class == "c" and result.worst_class_drop == pytest.approx(0.1)
    assert "class 'c' would lose 0.1000 of recall (0.9000 -> 0.8000), more than 0.05" in result.reason
    # The same drop in a class too small to tell (fewer than --min-class-images held-out images) is not gated.
    assert decision(challenger, champion, PromotionRule(significance=1.0, min_class_images=31)).promote


def test_a_clearly_better_challenger_is_promoted():
    champion = held_out([[True] * 35 + [False] * 15] * 2, ("a", "b"))
    challenger = held_out([[True] * 48 + [False] * 2] * 2, ("a", "b"))
    result = decision(challenger, champion)
    assert result.promote and result.p_value < 1e-6 and "balanced_accuracy 0.9600 vs champion 0.7000" in result.reason


def test_a_crash_after_the_switch_is_recorded_as_a_promotion_on_recovery(data, tiny_backbone, tmp_path, monkeypatch):
    config, root = config_for(data, tiny_backbone), tmp_path / "registry"
    retrain(config, root, log=quiet)
    add_images(data)
    real_append = Registry.append

    def crash_on_append(self, record):
        if record["action"] in ("promoted", "rejected"):
            raise RuntimeError("injected crash between the switch and the ledger")
        real_append(self, record)

    monkeypatch.setattr(Registry, "append", crash_on_append)
    with pytest.raises(RuntimeError, match="injected crash"):
        retrain(config, root, rule=ANY_CHALLENGER, log=quiet)
    monkeypatch.undo()
    registry = Registry(root)
    switched = registry.champion()
    assert switched == registry.pending()["run_id"]  # the link moved; the ledger has not heard of it
    record = retrain(config, root, log=quiet)
    assert record["run_id"] == switched and record["action"] == "promoted" and "recorded on recovery" in record["reason"]
    assert [r["action"] for r in registry.records()] == ["promoted", "promoted"]


def test_a_changed_configuration_trains_a_challenger_on_unchanged_data(data, tiny_backbone, tmp_path):
    config, root = config_for(data, tiny_backbone), tmp_path / "registry"
    first = retrain(config, root, log=quiet)
    changed = retrain(dataclasses.replace(config, epochs=5), root, log=quiet)
    assert changed["action"] in ("promoted", "rejected") and (root / "models" / changed["run_id"]).exists()
    assert retrain(dataclasses.replace(config, epochs=5), root, log=quiet)["action"] == "skipped"
    assert first["run_id"] != changed["run_id"]


def test_a_failed_distributed_retrain_is_one_line_and_exit_status_1(monkeypatch, tmp_path, capsys):
    from ray.train import TrainingFailedError

    import jobs.retrain as retrain_job

    def fail(*args, **kwargs):
        raise TrainingFailedError("Training failed: worker 1 died\n(long Ray traceback)")

    monkeypatch.setattr("tl_core.registry.retrain.retrain", fail)
    assert retrain_job.main(["--registry", str(tmp_path / "registry"), "--num-workers", "2"]) == 1
    error = capsys.readouterr().err.splitlines()
    assert error[0] == "error: distributed training failed: Training failed: worker 1 died"
    assert "Traceback" not in "\n".join(error) and "champion is unchanged" in error[1]


def test_sigterm_stops_a_retrain_and_the_next_one_continues_it(data, tiny_backbone, tmp_path):
    import json
    import signal
    import time

    root = tmp_path / "registry"
    command = [sys.executable, "-m", "jobs.retrain", "--registry", str(root), "--data-dir", str(data), "--backbone",
               tiny_backbone, "--image-size", str(TINY_IMAGE_SIZE), "--batch-size", "8", "--learning-rate", "0.05",
               "--recipe", "seed", "--epochs", "30"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        histories = list((root / "models").glob("*/history.json")) if (root / "models").exists() else []
        if histories and len(json.loads(histories[0].read_text())) >= 2:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    _, errors = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in errors, errors
    assert errors.strip().splitlines()[-2:] == ["Interrupted.", "The champion is unchanged; the next retrain continues this one."]
    assert Registry(root).champion() is None
    resumed = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "Recovering run" in resumed.stdout and "Resumed from" in resumed.stdout
    assert Registry(root).champion() is not None


def test_the_ledger_records_leakage_and_audit_strict_refuses_to_promote_on_it(data, tiny_backbone, tmp_path, capsys):
    import shutil

    config = tiny_config(tiny_backbone, data, recipe="default")  # cached features: the run audits its data too
    clean = retrain(config, tmp_path / "clean", log=quiet)
    assert (clean["validation_images_in_train"], clean["exact_duplicate_groups"]) == (0, 0)
    shutil.copy(data / "validation" / "red" / "red_001.png", data / "train" / "red" / "leaked.png")
    lines = []
    recorded = retrain(config, tmp_path / "recorded", log=lambda *args, **kwargs: lines.append(" ".join(map(str, args))))
    assert recorded["action"] == "promoted" and recorded["validation_images_in_train"] == 1
    assert recorded["exact_duplicate_groups"] == 1
    assert "Audit: 1 validation image(s) also in train/ (leakage), 1 group(s) of exact copies in all" in lines
    ledger = Registry(tmp_path / "recorded").records()[-1]
    assert ledger["validation_images_in_train"] == 1
    # From the run's own audit (its cached features): what it found, in its metrics.json and in the ledger.
    run_audit = json.loads((tmp_path / "recorded" / "models" / recorded["run_id"] / "metrics.json").read_text())["audit"]
    assert ledger["label_issues"] == run_audit["label_issues"] is not None
    assert ledger["validation_images_near_train"] == run_audit["validation_images_near_train"] >= 1
    assert "\nAudit: 1 validation image(s) also in train/ (leakage);" in capsys.readouterr().out  # the run's own line
    listed = format_ledger(Registry(tmp_path / "recorded").records()).splitlines()
    assert listed[0].split()[5:10] == ["chall.bal", "champ.bal", "p", "leak", "labels?"] and listed[1].split()[8] == "1"
    strict = retrain(config, tmp_path / "strict", audit="strict", log=quiet)
    assert strict["action"] == "rejected" and "--audit strict" in strict["reason"] and "1 validation image" in strict["reason"]
    assert Registry(tmp_path / "strict").champion() is None
