"""Object storage against local disk, side by side in one run: `python -m benchmarks.object_storage`.

Against a real S3-compatible server on 127.0.0.1 (moto_server, benchmarks/s3_server.py), this measures
  parquet     Parquet shards at the training size (`jobs.ingest --image-size 224` of realistic photos,
              benchmarks/photos.py) streamed through the training pipeline (make_dataset, shuffled, as
              an epoch reads them): images/s from S3 and from disk, alternated, medians of --repeats passes;
  job         the default job (`python -m jobs.train`, whole processes, on the built-in sample) with
              --output-dir on disk and in the bucket, alternated, medians of --repeats runs;
  check       listing and checking --files class-folder files (copies of the sample's PNGs) on S3 and on
              disk: the first check (every file read and decoded) and the second (nothing changed:
              the remembered verdicts), medians of --repeats second checks;
  server      the server's own rate: reads of one small object, serial and from 16 threads.
Loopback has no network latency and moto keeps objects in memory: these figures are the cost of the S3
protocol and of this project's code paths, not of a cloud bucket's round trips. Writes JSON (--output).
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
import tensorflow as tf  # noqa: F401  (imported before the timings; provenance reads its version)

from benchmarks import report
from benchmarks.photos import write_photo_dataset
from benchmarks.provenance import provenance
from benchmarks.s3_server import S3Server
from tl_core import storage
from tl_core.config import TrainConfig
from tl_core.data.images import make_dataset
from tl_core.data.sample import prepare_cats_vs_dogs
from tl_core.data.sources import check_dataset, list_split
from tl_core.model import assets

REPO = Path(__file__).resolve().parents[1]
SIZE, BATCH = 224, 100


def timed(function) -> tuple[object, float]:
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def stream_rate(directory: str, epoch: int) -> float:
    """Images/s of one shuffled epoch of Parquet shards through the training pipeline."""
    source = list_split(directory)
    count, seconds = timed(lambda: sum(len(labels) for _, labels in make_dataset(source, SIZE, BATCH, shuffle=True,
                                                                                 seed=0, epoch=epoch)))
    return count / seconds


def parquet(work: Path, bucket: str, photos: int, repeats: int) -> dict:
    from jobs import ingest

    folders = write_photo_dataset(work / "photos", {"train": photos, "validation": 2})
    local = work / "photos_224"
    assert ingest.main(["--data-dir", str(folders), "--output", str(local), "--image-size", str(SIZE), "--quiet"]) == 0
    remote = f"s3://{bucket}/photos_224"
    storage.upload(local, remote)
    rates = {"disk": [], "s3": []}
    for epoch in range(repeats):
        for where, directory in (("disk", str(local / "train")), ("s3", f"{remote}/train")):
            rates[where].append(stream_rate(directory, epoch))
    medians = {where: statistics.median(values) for where, values in rates.items()}
    return {"images": len(list_split(str(local / "train"))), "images_per_second": medians, "runs": rates,
            "s3_over_disk": medians["s3"] / medians["disk"]}


def job(work: Path, bucket: str, repeats: int) -> dict:
    """Whole `python -m jobs.train` processes (the default job on the built-in sample), alternated."""
    seconds = {"disk": [], "s3": []}
    for repeat in range(repeats):
        for where in ("disk", "s3"):
            output = str(work / "runs" / f"{repeat}") if where == "disk" else f"s3://{bucket}/runs/{repeat}"
            _, elapsed = timed(lambda: subprocess.run([sys.executable, "-m", "jobs.train", "--output-dir", output,
                                                       "--quiet"], cwd=REPO, check=True, stdout=subprocess.DEVNULL))
            seconds[where].append(elapsed)
    medians = {where: statistics.median(values) for where, values in seconds.items()}
    return {"seconds": medians, "runs": seconds, "s3_over_disk": medians["s3"] / medians["disk"]}


def copies_of_the_sample(root: Path, files: int) -> Path:
    """root/<class>/<n>.png: `files` files, copies of the sample's training PNGs."""
    sample = prepare_cats_vs_dogs(assets.cache_dir()) / "train"
    originals = sorted(sample.rglob("*.png"))
    for index in range(files):
        original = originals[index % len(originals)]
        folder = root / original.parent.name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(original, folder / f"{index:06d}.png")
    return root


def server_rate(bucket: str, requests: int = 1000) -> dict:
    """What the local server itself sustains: reads of one small object (storage.read_bytes), serial and from 16
    threads. It bounds every S3 figure here; a cloud bucket serves parallel requests in parallel."""
    import concurrent.futures

    location = f"s3://{bucket}/probe"
    storage.replace_bytes(location, b"\0" * 512)
    _, serial = timed(lambda: [storage.read_bytes(location) for _ in range(requests // 4)])
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        _, parallel = timed(lambda: list(pool.map(lambda _: storage.read_bytes(location), range(requests))))
    return {"reads_per_second_serial": requests // 4 / serial, "reads_per_second_16_threads": requests / parallel}


def check(work: Path, bucket: str, files: int, repeats: int) -> dict:
    local = copies_of_the_sample(work / "files", files)
    remote = f"s3://{bucket}/files"
    _, upload_seconds = timed(lambda: storage.upload(local, remote))
    results = {}
    for where, data_dir in (("disk", str(local)), ("s3", remote)):
        config = TrainConfig(data_dir=data_dir)
        cache = work / f"cache_{where}"
        first, first_seconds = timed(lambda: check_dataset(config.data, cache))
        assert first.decoded == files and not first.bad_files, (first.decoded, first.bad_files[:3])
        seconds = []
        for _ in range(repeats):
            second, elapsed = timed(lambda: check_dataset(config.data, cache))
            assert second.decoded == 0 and second.remembered == files
            seconds.append(elapsed)
        results[where] = {"first_seconds": first_seconds, "second_seconds": statistics.median(seconds),
                          "second_runs": seconds}
    return {"files": files, "upload_seconds": upload_seconds, **results,
            "first_s3_over_disk": results["s3"]["first_seconds"] / results["disk"]["first_seconds"],
            "second_s3_over_disk": results["s3"]["second_seconds"] / results["disk"]["second_seconds"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.object_storage", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=250, help="photos per class for the Parquet stream (6 classes)")
    parser.add_argument("--files", type=int, default=10_000, help="class-folder files for the check")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "object_storage.json"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="object-storage-") as tmp:
        work = Path(tmp)
        server = S3Server(work)
        try:
            os.environ.update(server.environment())
            bucket = server.new_bucket()
            print("Parquet shards at the training size, streamed ...", flush=True)
            results = {"parquet": parquet(work, bucket, args.photos, args.repeats)}
            results["server"] = server_rate(bucket)
            print(f"Checking {args.files:,} class-folder files ...", flush=True)
            results["check"] = check(work, bucket, args.files, args.repeats)
            print("The default job, run directory on disk and in the bucket ...", flush=True)
            results["job"] = job(work, bucket, args.repeats)
        finally:
            server.stop()
    results = {**provenance(), "server": "moto_server 5.2.5 on 127.0.0.1 (objects in memory, no network latency)",
               "repeats": args.repeats, "results": results}
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(report.render("object_storage", results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
