"""The data audit (jobs.audit): exact duplicates across and within splits, class balance."""
import json
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import write_colour_dataset
from jobs import audit as audit_job


@pytest.fixture
def planted(tmp_path):
    """Colour images with planted problems: a validation image copied into train/ (leakage), one training image
    copied under the other class (conflicting labels), one copied within its class (redundant), and a third class
    of 2 images against 12 (below a floor of 0.2)."""
    root = write_colour_dataset(tmp_path / "data", {"train": 12, "validation": 6})
    train, validation = root / "train", root / "validation"
    shutil.copy(validation / "red" / "red_001.png", train / "red" / "leaked.png")
    shutil.copy(train / "blue" / "blue_003.png", train / "red" / "mislabelled.png")
    shutil.copy(train / "red" / "red_005.png", train / "red" / "again.png")
    for split, count in (("train", 2), ("validation", 1)):
        (root / split / "rare").mkdir()
        for i in range(count):
            shutil.copy(root / split / "blue" / f"blue_{2 * i:03d}.jpg", root / split / "rare" / f"rare_{i}.jpg")
    return root


def findings_of(output_dir) -> list[dict]:
    return pq.read_table(output_dir / "findings.parquet").to_pylist()


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
    assert report["class_balance"]["train"]["images_per_class"]["red"] == 15
    assert report["class_balance"]["train"]["largest_over_smallest"] == 7.5
    assert (tmp_path / "audit" / "exact_duplicates.png").stat().st_size > 10_000
    assert "in both train/ and validation/ (leakage" in out and str(tmp_path / "audit" / "findings.parquet") in out


def test_the_audit_of_parquet_shards_finds_what_it_finds_in_their_folders(planted, tmp_path, capsys):
    from jobs import ingest

    assert ingest.main(["--data-dir", str(planted), "--output", str(tmp_path / "shards"), "--quiet"]) == 0
    assert audit_job.main(["--data-dir", str(planted), "--output-dir", str(tmp_path / "folders"), "--quiet"]) == 0
    assert audit_job.main(["--data-dir", str(tmp_path / "shards"), "--output-dir", str(tmp_path / "parquet"),
                           "--quiet"]) == 0
    folders, parquet = (json.loads((tmp_path / name / "audit.json").read_text()) for name in ("folders", "parquet"))
    assert parquet["exact_duplicate_groups"] == folders["exact_duplicate_groups"]
    assert parquet["class_balance"] == folders["class_balance"]
    row_paths = [path for finding in findings_of(tmp_path / "parquet") for path in finding["paths"]]
    assert any(path.startswith(str(planted / "train" / "red" / "leaked.png") + " (") for path in row_paths)


def test_the_built_in_sample_has_five_groups_of_exact_copies_across_its_splits(real_cache, tmp_path, capsys):
    assert audit_job.main(["--cache-dir", str(real_cache), "--output-dir", str(tmp_path / "audit"), "--quiet"]) == 0
    report = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert report["exact_duplicate_groups"]["leakage"] == 5 and report["validation_images_also_in_train"] == 5
    assert report["images"] == {"train": 1400, "validation": 600}


def test_bad_input_is_one_line(tmp_path, capsys):
    assert audit_job.main(["--data-dir", str(tmp_path / "missing"), "--output-dir", str(tmp_path / "audit")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "is not a directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "audit").exists()
