"""The large-data path: checked once (Parquet from jobs.ingest is trusted, folder verdicts are remembered)."""
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import colour_image, encode, write_colour_dataset
from jobs.ingest import main as ingest
from tl_core.config import TrainConfig
from tl_core.data.images import list_image_folder
from tl_core.data.parquet import CHECKED_KEY, ParquetDatasetError, write_parquet_shards
from tl_core.data.sources import check_dataset, describe_check


def _check(data_dir, cache, **overrides):
    return check_dataset(TrainConfig(data_dir=str(data_dir), cache_dir=str(cache), **overrides).data, cache)


def test_a_second_check_decodes_only_new_or_changed_files(tmp_path):
    root = write_colour_dataset(tmp_path / "data", {"train": 6, "validation": 3})
    cache, total = tmp_path / "cache", 18
    first = _check(root, cache)
    assert (first.decoded, first.remembered, first.bad_files) == (total, 0, [])
    second = _check(root, cache)
    assert (second.decoded, second.remembered, second.bad_files) == (0, total, [])
    assert "18 unchanged since their last check" in describe_check(second)

    red = root / "train" / "red"
    (red / "red_000.jpg").write_bytes(b"\xff\xd8 no longer a JPEG")  # changed: size and modification time
    (red / "new.png").write_bytes(encode(colour_image(np.random.default_rng(1), 0, 30, 30), "PNG"))
    (red / "new_tiny.png").write_bytes(encode(colour_image(np.random.default_rng(2), 0, 4, 4), "PNG"))
    (root / "train" / "blue" / "blue_001.png").unlink()
    third = _check(root, cache)
    assert (third.decoded, third.remembered) == (3, total - 2)
    bad = {Path(item.path).name: item.reason for item in third.bad_files}
    assert set(bad) == {"red_000.jpg", "new_tiny.png"} and "below the minimum side of 8" in bad["new_tiny.png"]

    fourth = _check(root, cache)  # bad verdicts are remembered too: reported again without decoding
    assert (fourth.decoded, fourth.remembered, fourth.bad_files) == (0, total + 1, third.bad_files)

    stat = os.stat(red / "new.png")
    os.utime(red / "new.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: checked again
    assert _check(root, cache).decoded == 1
    stricter = _check(root, cache, min_image_side=30)  # other limits: other verdicts
    assert stricter.decoded == total + 1 and len(stricter.bad_files) > 2


def test_unchanged_folders_leave_the_verdict_file_as_it_is(tmp_path):
    root = write_colour_dataset(tmp_path / "data", {"train": 3, "validation": 2})
    _check(root, tmp_path / "cache")
    (verdict_file,) = (tmp_path / "cache" / "checks").glob("*.parquet")
    written = verdict_file.stat().st_mtime_ns
    assert _check(root, tmp_path / "cache").decoded == 0
    assert verdict_file.stat().st_mtime_ns == written  # nothing to save
    (root / "validation" / "red" / "red_000.jpg").unlink()  # only a file gone: nothing decoded, but forgotten
    assert _check(root, tmp_path / "cache").decoded == 0
    assert len(pq.read_table(verdict_file)) == 9


def test_files_that_cannot_be_read_are_read_again_each_time(tmp_path, monkeypatch):
    root = write_colour_dataset(tmp_path / "data", {"train": 2, "validation": 1})
    locked = root / "train" / "blue" / "blue_001.png"
    real_open = open

    def deny(path, *args, **kwargs):
        if str(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", deny)
    for decoded in (6, 1):  # the verdict is not remembered: the permission may come back without a new mtime
        check = _check(root, tmp_path / "cache")
        assert check.decoded == decoded and [(item.path, item.reason) for item in check.bad_files] == [
            (str(locked), "cannot read: Permission denied")]
    monkeypatch.setattr("builtins.open", real_open)
    check = _check(root, tmp_path / "cache")
    assert (check.decoded, check.remembered, check.bad_files) == (1, 5, [])


def test_a_corrupt_verdict_file_means_checking_everything_again(tmp_path):
    root = write_colour_dataset(tmp_path / "data", {"train": 2, "validation": 1})
    _check(root, tmp_path / "cache")
    for path in (tmp_path / "cache" / "checks").glob("*.parquet"):
        path.write_bytes(b"not parquet")
    assert _check(root, tmp_path / "cache").decoded == 6
    assert _check(root, tmp_path / "cache").decoded == 0


def test_parquet_from_ingest_is_trusted_unless_recheck(tmp_path):
    root = write_colour_dataset(tmp_path / "data", {"train": 5, "validation": 2})
    output = tmp_path / "pq"
    assert ingest(["--data-dir", str(root), "--output", str(output), "--min-image-side", "10", "--quiet"]) == 0
    metadata = pq.read_schema(next((output / "train").glob("*.parquet"))).metadata
    assert json.loads(metadata[CHECKED_KEY]) == {"min_side": 10, "max_pixels": 100_000_000}

    trusted = _check(output, tmp_path / "cache")
    assert (trusted.decoded, trusted.trusted) == (0, 14)
    assert "14 Parquet rows checked by jobs.ingest" in describe_check(trusted)
    assert _check(output, tmp_path / "cache", min_image_side=8).trusted == 14  # a looser limit: still covered
    assert _check(output, tmp_path / "cache", min_image_side=30).decoded == 14  # stricter than the ingest's check
    assert _check(output, tmp_path / "cache", recheck=True).decoded == 14


def test_only_the_recorded_check_is_trusted(tmp_path):
    root = write_colour_dataset(tmp_path / "data", {"train": 3, "validation": 2})
    (root / "train" / "red" / "zz_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    limits = {"min_side": 8, "max_pixels": 10**8}
    for name, checked in (("claims_checked", limits), ("from_elsewhere", None)):
        for split in ("train", "validation"):
            write_parquet_shards(list_image_folder(root / split), tmp_path / name / split, checked=checked)
    # Shards claiming a check are trusted (here wrongly: the point is that nothing was decoded) ...
    assert _check(tmp_path / "claims_checked", tmp_path / "cache").bad_files == []
    # ... and --recheck, or shards without the claim, decode every row and find the broken one.
    for name, recheck in (("claims_checked", True), ("from_elsewhere", False)):
        check = _check(tmp_path / name, tmp_path / "cache", recheck=recheck)
        assert [(Path(item.path).name, item.row) for item in check.bad_files] == [("part-00000.parquet", 6)]


def test_parquet_with_other_columns_is_refused_naming_the_file(tmp_path):
    import pyarrow as pa

    from tl_core.data.parquet import CLASS_NAMES_KEY
    from tl_core.data.sources import list_split

    table = pa.table({"image": [b"x"], "label": pa.array([0], pa.int64())}).replace_schema_metadata(
        {CLASS_NAMES_KEY: b'["a", "b"]'})
    (tmp_path / "train").mkdir()
    pq.write_table(table, tmp_path / "train" / "part-00000.parquet")
    with pytest.raises(ParquetDatasetError, match=r"part-00000.parquet has columns image binary, label int64; expected"):
        list_split(tmp_path / "train")
