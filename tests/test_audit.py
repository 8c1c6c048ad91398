"""The data audit (jobs.audit): exact and near duplicates across and within splits, likely label errors, class
balance."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage
import tensorflow as tf

from conftest import assert_the_sample_audit, findings_of, write_colour_dataset
from jobs import audit as audit_job


@pytest.fixture
def planted(tmp_path):
    """Colour images with planted problems: a validation image copied into train/ (leakage), a photo in validation/
    and the same photo at twice the size, as a JPEG, in train/ (near leakage), a red training image moved into blue/ (a label error),
    one training image copied under the other class (conflicting labels), one copied within its class (redundant),
    and a third class of 2 images against 12 (below a floor of 0.2)."""
    root = write_colour_dataset(tmp_path / "data", {"train": 12, "validation": 6})
    train, validation = root / "train", root / "validation"
    shutil.copy(validation / "red" / "red_001.png", train / "red" / "leaked.png")
    photo = tf.image.resize(skimage.data.chelsea(), [60, 80], antialias=True)  # a picture, unlike the noise images
    (validation / "red" / "photo.png").write_bytes(tf.io.encode_png(tf.cast(tf.round(photo), tf.uint8)).numpy())
    resized = tf.cast(tf.round(tf.image.resize(photo, [120, 160])), tf.uint8)
    (train / "red" / "resized.jpg").write_bytes(tf.io.encode_jpeg(resized, quality=85).numpy())
    shutil.move(train / "red" / "red_007.png", train / "blue" / "red_007.png")
    shutil.copy(train / "blue" / "blue_003.png", train / "red" / "mislabelled.png")
    shutil.copy(train / "red" / "red_005.png", train / "red" / "again.png")
    for split, count in (("train", 2), ("validation", 1)):
        (root / split / "rare").mkdir()
        for i in range(count):
            shutil.copy(root / split / "blue" / f"blue_{2 * i:03d}.jpg", root / split / "rare" / f"rare_{i}.jpg")
    return root


def test_the_audit_finds_each_planted_problem_of_class_folders(planted, tmp_path, capsys):
    assert audit_job.main(["--data-dir", str(planted), "--output-dir", str(tmp_path / "audit"), "--class-floor", "0.2"]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    # rare/ copies blue images: each is also a duplicate, under conflicting labels (rare vs blue) or across splits.
    by_kind = {}
    for finding in findings_of(tmp_path / "audit"):
        by_kind.setdefault(finding["kind"], []).append(finding)
    leaked = [f for f in by_kind["leakage"] if str(planted / "train" / "red" / "leaked.png") in f["paths"]]
    assert len(leaked) == 1 and leaked[0]["splits"] == ["train", "validation"] and leaked[0]["classes"] == ["red", "red"]
    conflicting = [f for f in by_kind["conflicting_labels"] if str(planted / "train" / "red" / "mislabelled.png") in f["paths"]]
    assert len(conflicting) == 1 and sorted(conflicting[0]["classes"]) == ["blue", "red"]
    redundant = by_kind["redundant_copy"]
    assert [sorted(f["paths"]) for f in redundant] == [sorted([str(planted / "train" / "red" / "again.png"),
                                                               str(planted / "train" / "red" / "red_005.png")])]
    assert {(f["splits"][0], f["classes"][0]) for f in by_kind["class_below_floor"]} == {("train", "rare"),
                                                                                          ("validation", "rare")}
    assert report["exact_duplicate_groups"]["redundant_copy"] == 1 and report["validation_images_also_in_train"] >= 1
    assert report["class_balance"]["train"]["images_per_class"] == {"blue": 13, "rare": 2, "red": 15}
    assert report["class_balance"]["train"]["largest_over_smallest"] == 7.5
    assert (tmp_path / "audit" / "exact_duplicates.png").stat().st_size > 10_000
    assert "in both train/ and validation/ (leakage" in out and str(tmp_path / "audit" / "findings.parquet") in out

    near = [f for f in by_kind["near_leakage"] if str(planted / "train" / "red" / "resized.jpg") in f["paths"]]
    assert [f["paths"] for f in near if str(planted / "validation" / "red" / "photo.png") in f["paths"]], near
    assert all(f["score"] >= report["thresholds"]["near_similarity"] for f in by_kind["near_leakage"])
    assert not [f for f in by_kind.get("near_duplicate", []) + near if str(planted / "train" / "red" / "leaked.png")
                in f["paths"] and str(planted / "validation" / "red" / "red_001.png") in f["paths"]]  # exact: said once
    moved = [f for f in by_kind["label_issue"] if f["paths"] == [str(planted / "train" / "blue" / "red_007.png")]]
    assert len(moved) == 1 and moved[0]["classes"] == ["blue"] and moved[0]["suggested_class"] == "red", by_kind["label_issue"]
    assert report["label_issues"]["train"] >= 1 and report["validation_images_near_train"] >= 1
    for sheet in ("near_duplicates.png", "label_issues.png"):
        assert (tmp_path / "audit" / sheet).stat().st_size > 10_000 and str(tmp_path / "audit" / sheet) in out


def test_the_audit_of_parquet_shards_finds_what_it_finds_in_their_folders(planted, tmp_path, capsys):
    from jobs import ingest

    assert ingest.main(["--data-dir", str(planted), "--output", str(tmp_path / "shards"), "--quiet"]) == 0
    assert audit_job.main(["--data-dir", str(planted), "--output-dir", str(tmp_path / "folders"), "--quiet"]) == 0
    assert audit_job.main(["--data-dir", str(tmp_path / "shards"), "--output-dir", str(tmp_path / "parquet"),
                           "--quiet"]) == 0
    folders, parquet = (json.loads((tmp_path / name / "audit.json").read_text()) for name in ("folders", "parquet"))
    assert parquet["exact_duplicate_groups"] == folders["exact_duplicate_groups"]
    assert parquet["class_balance"] == folders["class_balance"]
    assert parquet["near_duplicate_pairs"] == folders["near_duplicate_pairs"]
    assert parquet["label_issues"] == folders["label_issues"]
    row_paths = [path for finding in findings_of(tmp_path / "parquet") for path in finding["paths"]]
    assert any(path.startswith(str(planted / "train" / "red" / "leaked.png") + " (") for path in row_paths)


@pytest.mark.slow  # the default run's test audits the sample from the run's own features (tests/test_train.py)
def test_the_built_in_sample_has_five_groups_of_exact_copies_across_its_splits(real_cache, tmp_path, capsys):
    assert audit_job.main(["--cache-dir", str(real_cache), "--output-dir", str(tmp_path / "audit"), "--quiet"]) == 0
    assert_the_sample_audit(tmp_path / "audit")


def test_exact_only_runs_no_backbone(planted, tmp_path, capsys):
    assert audit_job.main(["--data-dir", str(planted), "--output-dir", str(tmp_path / "audit"), "--exact-only",
                           "--backbone", str(tmp_path / "no-such-backbone")]) == 0
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["near_duplicate_pairs"] is None and report["label_issues"] is None
    assert {f["kind"] for f in findings_of(tmp_path / "audit")} == {"leakage", "conflicting_labels", "redundant_copy"}
    assert "near duplicates" not in capsys.readouterr().out


def test_bad_input_is_one_line(tmp_path, capsys):
    assert audit_job.main(["--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "audit").exists()


def test_the_near_duplicate_search_in_chunks_finds_what_all_pairs_would(monkeypatch):
    from tl_core.audit import near

    rng = np.random.default_rng(0)
    features = np.maximum(rng.standard_normal((50, 16)), 0).astype(np.float32)
    features[10] = features[3] + 0.01 * rng.random(16)  # near copies of row 3
    features[40] = features[3] + 0.01 * rng.random(16)
    unit = near.normalised(features)
    similarity = unit @ unit.T
    expected = {(i, j) for i in range(50) for j in range(i + 1, 50) if similarity[i, j] >= 0.9}
    monkeypatch.setattr(near, "CHUNK_ROWS", 7)  # several chunks, the last one short
    found = near.similar_pairs(features, 0.9, neighbours=49)
    assert {(i, j) for i, j, _ in found} == expected and {(3, 10), (3, 40), (10, 40)} <= expected
    assert [score for *_, score in found] == sorted((score for *_, score in found), reverse=True)
    splits = near.near_duplicates({"train": features[:30], "validation": features[30:]}, 0.9, neighbours=49,
                                  same_bytes=lambda a, b: {a, b} == {("train", 3), ("train", 10)})
    kinds = {tuple(map(tuple, finding["rows"])): finding["kind"] for finding in splits}
    assert kinds[(("train", 3), ("validation", 10))] == "near_leakage" and (("train", 3), ("train", 10)) not in kinds


def test_a_default_run_audits_its_data_from_its_own_features(planted, tiny_backbone, tmp_path, capsys):
    from conftest import tiny_config
    from tl_core.run_dir import prepare_run_dir
    from tl_core.training.train import train

    config = prepare_run_dir(tiny_config(tiny_backbone, planted, tmp_path / "run", recipe="default"))
    assert config.audit and config.uses_feature_cache
    metrics = train(config)
    out = capsys.readouterr().out
    run_dir = tmp_path / "run"
    report = json.loads((run_dir / "audit.json").read_text())
    assert report["validation_images_also_in_train"] == metrics["audit"]["validation_images_in_train"] >= 1
    assert metrics["audit"]["label_issues"] == sum(report["label_issues"].values())
    assert json.loads((run_dir / "metrics.json").read_text())["audit"] == metrics["audit"]
    assert {"leakage", "label_issue"} <= {f["kind"] for f in findings_of(run_dir)}
    assert all((run_dir / sheet).exists() for sheet in ("exact_duplicates.png", "near_duplicates.png", "label_issues.png"))
    assert "validation image(s) also in train/ (leakage)" in out and str(run_dir / "audit.json") in out


@pytest.mark.parametrize("settings", [{"audit": False}, {"recipe": "seed"}])
def test_a_run_without_audit_or_without_features_writes_none(planted, tiny_backbone, tmp_path, capsys, settings):
    from conftest import tiny_config
    from tl_core.run_dir import prepare_run_dir
    from tl_core.training.train import train

    config = prepare_run_dir(tiny_config(tiny_backbone, planted, tmp_path / "run", **{"recipe": "default", **settings}))
    metrics = train(config)
    assert "audit" not in metrics and not (tmp_path / "run" / "audit.json").exists()
    said = "Audit: not from this run" in capsys.readouterr().out
    assert said == config.audit  # a run on images every epoch points to jobs.audit; --no-audit says nothing


def test_check_with_audit_audits_before_any_training(planted, tmp_path, monkeypatch, capsys):
    from jobs import train as train_job

    monkeypatch.chdir(tmp_path)
    assert train_job.main(["--data-dir", str(planted), "--check", "--audit", "--epochs", "1", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    [audit_dir] = (tmp_path / "runs").iterdir()
    assert audit_dir.name.startswith("audit-") and sorted(p.name for p in (tmp_path / "runs").iterdir()) == [audit_dir.name]
    report = json.loads((audit_dir / "audit.json").read_text())
    assert report["validation_images_also_in_train"] >= 1 and report["label_issues"]["train"] >= 1
    assert "Check passed" in out and f"{Path('runs') / audit_dir.name / 'audit.json'}" in out
