"""How the large-data path grows with the number of images: `python -m benchmarks.large_data`.

For each size (default 10k, 100k and 1M files) it builds a dataset of small image files: hard links to the
built-in sample's 2000 PNGs (28x28 silhouettes, about 0.3 KiB each), 500 of them in validation/ and the rest in
train/, two classes. Every figure is for the whole dataset (train/ and validation/) at that size:
  listing        list_image_folder over both splits, in a fresh process: seconds, and the peak memory it adds
                 (VmHWM reset before, minus VmRSS before), per file: the paths, labels and (size, mtime) it keeps
  first check    check_dataset with an empty cache: listing, then every file read and decoded (the header check
                 and the decode), verdicts saved; files per second
  second check   check_dataset again, nothing changed: listing and the remembered verdicts, nothing decoded (the
                 median of 3)
  stat alone     a bare os.scandir loop calling DirEntry.stat() on every file, nothing kept (the median of 3, taken
                 between the second checks): the least that any check noticing changed files does, a stat per file
  local ingest   jobs.ingest's work in this process with an empty cache (check, then the Parquet shards with
                 the files' bytes): images per second, the check and write split
  Ray ingest     the same as jobs.ingest --ray, on a Ray instance of 2 CPUs started here (the check in tasks of 500
                 files, one task per part file); Ray's start is not counted, its workers' start is
  first step     on the local ingest's Parquet, the seed recipe (no feature cache) with the built-in backbone:
                 seconds from the check to the end of the first training step (the 500 validation images'
                 backbone features are computed before it, the same work at every size); with --recheck too, up to
                 --recheck-up-to files (it decodes every row)
  photo checks   the first and second check again at --photo-files files (default 100k), hard links to 100 photos of
                 500x375 pixels (benchmarks/photos.py: the size and compression of the classic recipe's images),
                 whose decode costs what real photos cost (the 28x28 PNGs decode almost for free, so their first
                 check is mostly listing and file opening, which the second check does too)
Hard links make every file's bytes come from the page cache: the check and ingest figures are CPU figures
(decode, Parquet, Python), not disk figures. One run; compare figures as ratios. Writes JSON (--output).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from benchmarks import report
from benchmarks.provenance import provenance
from tl_core import progress
from tl_core.config import SEED_RECIPE, TrainConfig
from tl_core.data.images import list_image_folder
from tl_core.data.ingest import ingest
from tl_core.data.sample import prepare_cats_vs_dogs
from tl_core.data.sources import check_dataset
from tl_core.model import assets

VALIDATION_FILES = 500

LISTING = """
import json, sys, time
from pathlib import Path
from tl_core.data.images import list_image_folder

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # kB
root = Path(sys.argv[1])
with open("/proc/self/clear_refs", "w") as file:
    file.write("5")  # resets VmHWM (the peak) to the current resident size
before, started = status("VmRSS"), time.perf_counter()
train = list_image_folder(root / "train")
validation = list_image_folder(root / "validation", train.class_names)
seconds = time.perf_counter() - started
print(json.dumps({"files": len(train) + len(validation), "seconds": seconds, "added_bytes": status("VmHWM") - before}))
"""


def build_dataset(root: Path, files: int, sources: dict) -> Path:
    """root/{train,validation}/{cat,dog}/: `files` hard links in all, VALIDATION_FILES of them in validation/."""
    names = sorted(sources)
    for split, count in (("validation", VALIDATION_FILES), ("train", files - VALIDATION_FILES)):
        for index in range(count):
            name = names[index % len(names)]
            pool = sources[name]
            folder = root / split / name
            if index < len(names):
                folder.mkdir(parents=True)
            source = pool[(index // len(names)) % len(pool)]
            os.link(source, folder / f"{name}_{index:07d}{Path(source).suffix}")
    return root


def listing(root: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", LISTING, str(root)], capture_output=True, text=True, check=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return {**report, "bytes_per_file": report["added_bytes"] / report["files"]}


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def stat_every_file(root: Path) -> int:
    """One stat per file of the dataset (root/<split>/<class>/<file>), nothing else: how many files."""
    count = 0
    for split in ("train", "validation"):
        for folder in os.scandir(root / split):
            with os.scandir(folder.path) as entries:
                for entry in entries:
                    entry.stat()
                    count += 1
    return count


def checks(root: Path, cache: Path, repeats: int = 3) -> dict:
    """The first check (once: it fills the cache), the second and the stat alone (the medians of `repeats`)."""
    config = TrainConfig(data_dir=str(root))
    first, first_seconds = timed(lambda: check_dataset(config.data, cache))
    files = len(first.train) + len(first.validation)
    assert first.decoded == files and not first.bad_files
    del first  # not held while the second check runs
    seconds, stat_seconds = [], []
    for _ in range(repeats):
        second, elapsed = timed(lambda: check_dataset(config.data, cache))
        assert second.decoded == 0
        seconds.append(elapsed)
        stated, elapsed = timed(lambda: stat_every_file(root))
        assert stated == files
        stat_seconds.append(elapsed)
    second_seconds = statistics.median(seconds)
    return {"first_seconds": first_seconds, "first_files_per_second": files / first_seconds,
            "second_seconds": second_seconds, "second_seconds_each": seconds, "second_over_first": second_seconds / first_seconds,
            "stat_seconds": statistics.median(stat_seconds), "stat_seconds_each": stat_seconds,
            "stat_over_first": statistics.median(stat_seconds) / first_seconds}


def ingest_once(root: Path, work: Path, name: str, find_bad, write) -> dict:
    config = TrainConfig(data_dir=str(root))
    check, check_seconds = timed(lambda: check_dataset(config.data, work / f"{name}_cache", find_bad))
    _, write_seconds = timed(lambda: ingest(check, work / name, skip_bad_files=False, write=write, log=lambda *a, **k: None))
    images = len(check.train) + len(check.validation)
    return {"check_seconds": check_seconds, "write_seconds": write_seconds,
            "images_per_second": images / (check_seconds + write_seconds)}


def first_step(parquet: Path, work: Path, *, recheck: bool) -> float:
    """Seconds from the check to the end of the first training step of a seed-recipe run on parquet."""
    import tf_keras

    from tl_core.run_dir import prepare_run_dir
    from tl_core.training import job
    from tl_core.training.train import train

    class Stop(tf_keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.seconds = time.perf_counter() - started
            self.model.stop_training = True

    stop = Stop()
    output = work / f"run_{parquet.name}_{recheck}"
    config = TrainConfig(**{**SEED_RECIPE, "data_dir": str(parquet), "output_dir": str(output), "epochs": 1,
                            "recheck": recheck})
    started = time.perf_counter()
    checked = job.check(config, log=lambda *a, **k: None)
    train(prepare_run_dir(config), sources=checked.sources, callbacks=[stop])
    shutil.rmtree(output)
    return stop.seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.large_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--recheck-up-to", type=int, default=100_000, help="largest size timed with --recheck too")
    parser.add_argument("--no-ray", action="store_true", help="leave out the Ray ingest")
    parser.add_argument("--photo-files", type=int, default=100_000, help="files of the photo checks (0: none)")
    parser.add_argument("--work-dir", help="where the datasets go (default: a temporary directory; 1M files take 1 GB)")
    parser.add_argument("--output", default="benchmarks/results/large_data.json")
    args = parser.parse_args(argv)
    progress.set_quiet(True)
    sample = prepare_cats_vs_dogs(assets.cache_dir())
    sources = {name: sorted(str(path) for split in ("train", "validation") for path in (sample / split / name).iterdir())
               for name in list_image_folder(sample / "train").class_names}
    results = {**provenance(), "validation_files": VALIDATION_FILES, "sizes": {}}
    if not args.no_ray:
        import ray

        _, results["ray_init_seconds"] = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))
        from tl_core.data.ingest_ray import find_bad_files_on_ray, write_parquet_shards_on_ray
    from tl_core.data.checks import find_bad_files
    from tl_core.data.parquet import write_parquet_shards

    with tempfile.TemporaryDirectory(dir=args.work_dir) as tmp:
        for size in args.sizes:
            work = Path(tmp) / str(size)
            print(f"{size} files: building ...", flush=True)
            _, build_seconds = timed(lambda: build_dataset(work / "data", size, sources))
            row = {"build_seconds": build_seconds}
            print(f"{size} files: listing, checks ...", flush=True)
            row["listing"] = listing(work / "data")
            row["checks"] = checks(work / "data", work / "cache")
            print(f"{size} files: local ingest ...", flush=True)
            row["local_ingest"] = ingest_once(work / "data", work, "local", find_bad_files, write_parquet_shards)
            if not args.no_ray:
                print(f"{size} files: Ray ingest ...", flush=True)
                row["ray_ingest"] = ingest_once(work / "data", work, "ray", find_bad_files_on_ray, write_parquet_shards_on_ray)
                shutil.rmtree(work / "ray")
            print(f"{size} files: time to first step ...", flush=True)
            row["first_step_seconds"] = first_step(work / "local", work, recheck=False)
            if size <= args.recheck_up_to:
                row["first_step_recheck_seconds"] = first_step(work / "local", work, recheck=True)
            results["sizes"][str(size)] = row
            print(json.dumps(row, indent=1), flush=True)
            shutil.rmtree(work)
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
        if args.photo_files:
            print(f"{args.photo_files} photo files: building, checks ...", flush=True)
            from benchmarks.photos import write_photo_dataset

            photos = write_photo_dataset(Path(tmp) / "photos", {"all": 50}, classes=("chelsea", "coffee")) / "all"
            pools = {name: sorted(str(path) for path in (photos / name).iterdir()) for name in ("chelsea", "coffee")}
            data = build_dataset(Path(tmp) / "photo_data", args.photo_files, pools)
            results["photos"] = {"files": args.photo_files, "listing": listing(data),
                                 "checks": checks(data, Path(tmp) / "photo_cache")}
            print(json.dumps(results["photos"], indent=1), flush=True)
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(report.render("large_data", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
