"""The default job against its floor, side by side: `python -m benchmarks.floor` (about 5 minutes on 2 cores).

The floor is what a run with a frozen backbone and cached features cannot avoid: start Python, import TensorFlow,
load the backbone, and run it once over every training and validation image, through the project's own pipeline
(make_dataset), writing nothing (`--floor-child`, a process of its own). The job is the default
`python -m jobs.train` on the built-in sample. Both run as whole processes, alternated, --repeats each; reported:
medians of wall time, the backbone pass's images/s in each, peak memory of each process (its own rusage: this
launcher imports no TensorFlow, so a child does not start from a large parent), and the job's time by phase, from
when each of its log lines appeared:

  start, imports and check   until "Run directory" (the check loads the backbone once)
  listing the data           until "Training on"
  backbone load              until "Backbone features ... computed once", less the feature pass
  feature pass               the run's own feature_seconds (metrics.json)
  head epochs                until the last epoch's line
  audit                      until "Audit:" (the run's data audit, docs/audit.md)
  outputs                    until "Validation accuracy" (SavedModel, plots, metrics)
  exit                       until the process ended

--before DIR adds the default job of another checkout (e.g. `git worktree add /tmp/before <commit>`), run from DIR with
this interpreter, alternated with the others: the job before and after a change, side by side in one run.

Writes JSON (--output, default benchmarks/results/floor.json) and prints the docs' table ("floor").
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
PHASES = (("start, imports and check", "Run directory"), ("listing the data", "Training on"),
          ("backbone load and feature pass", "Backbone features of"), ("head epochs", "epoch  60/60"), ("audit", "Audit:"),
          ("outputs", "Validation accuracy"))


def floor_child() -> None:
    """Import, load the backbone, one pass over the sample's images through make_dataset; print JSON."""
    started = time.perf_counter()
    import tl_core  # noqa: F401
    import numpy as np  # noqa: F401
    import tensorflow as tf  # noqa: F401

    from tl_core.config import TrainConfig
    from tl_core.data.images import make_dataset
    from tl_core.data.sources import load_splits
    from tl_core.model.assets import cache_dir
    from tl_core.model.backbones import resolve_backbone
    from tl_core.model.classifier import build_classifier
    from tl_core.data.step import as_fed

    imported = time.perf_counter()
    config = TrainConfig()
    train, validation, _ = load_splits(config.data, cache_dir(None))
    classifier = build_classifier(resolve_backbone(config.backbone, cache_dir(None)), len(train.class_names),
                                  config.image_size)
    backbone = classifier.get_layer("backbone")
    extract = tf.function(lambda images: backbone(as_fed(images), training=False))
    loaded = time.perf_counter()
    images = 0
    for source in (train, validation):
        for batch, _ in make_dataset(source, config.image_size, config.batch_size):
            extract(batch).numpy()
            images += len(batch)
    passed = time.perf_counter()
    print(json.dumps({"imports": imported - started, "load": loaded - imported, "pass": passed - loaded,
                      "images": images, "images_per_second": images / (passed - loaded)}))


def measured(command: list[str], checkout: Path = REPO) -> tuple[float, float, list[tuple[float, str]]]:
    """(wall seconds, peak RSS MiB, [(seconds since start, line)]) of a whole process, run from a checkout's code."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(checkout)})
    lines = [(time.perf_counter() - started, line.rstrip("\n")) for line in process.stdout]
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss / 1024, lines


def phases(lines: list[tuple[float, str]], wall: float, feature_seconds: float) -> dict:
    """Seconds of each phase of the job, from when its marker line appeared."""
    seconds, before = {}, 0.0
    for name, marker in PHASES:
        at = next((when for when, line in lines if line.startswith(marker) or marker in line), None)
        if at is None:
            continue
        seconds[name], before = at - before, at
    seconds["exit"] = wall - before
    load_and_pass = seconds.pop("backbone load and feature pass")
    seconds = {"start, imports and check": seconds.pop("start, imports and check"),
               "listing the data": seconds.pop("listing the data"),
               "backbone load": load_and_pass - feature_seconds, "feature pass": feature_seconds, **seconds}
    return seconds


def job_run(checkout: Path, run_dir: Path) -> dict:
    """The default `python -m jobs.train` of a checkout, measured: wall time, peak memory, phases, feature rate."""
    wall, peak, lines = measured([sys.executable, "-m", "jobs.train", "--output-dir", str(run_dir)], checkout)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    images = metrics["run"]["train_images"] + metrics["run"]["validation_images"]
    return {"seconds": wall, "peak_mib": peak, "phases": phases(lines, wall, metrics["run"]["feature_seconds"]),
            "images_per_second": images / metrics["run"]["feature_seconds"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.floor", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "floor.json")
    parser.add_argument("--before", type=Path, metavar="DIR", help="a checkout of an earlier commit: its default job "
                        "runs alternated with this one's")
    parser.add_argument("--floor-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.floor_child:
        floor_child()
        return 0
    jobs = {"job": REPO, **({"before": args.before.resolve()} if args.before else {})}
    runs = {"floor": [], **{name: [] for name in jobs}}
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            wall, peak, lines = measured([sys.executable, "-m", "benchmarks.floor", "--floor-child"])
            child = json.loads(lines[-1][1])
            runs["floor"].append({"seconds": wall, "peak_mib": peak, **child,
                                  "start_and_exit": wall - child["imports"] - child["load"] - child["pass"]})
            for name, checkout in jobs.items():
                run_dir = Path(work) / f"{name}-{repeat}"
                runs[name].append(job_run(checkout, run_dir))
            print(f"repeat {repeat + 1}/{args.repeats}: "
                  + ", ".join(f"{name} {entries[-1]['seconds']:.1f} s" for name, entries in runs.items()), flush=True)

    def median(which: str, key: str) -> float:
        return statistics.median(entry[key] for entry in runs[which])

    results = {"runs": runs,
               "floor": {key: median("floor", key) for key in ("seconds", "peak_mib", "images_per_second", "imports",
                                                              "load", "pass", "start_and_exit")},
               **{name: {"seconds": median(name, "seconds"), "peak_mib": median(name, "peak_mib"),
                         "images_per_second": median(name, "images_per_second"),
                         "phases": {phase: statistics.median(entry["phases"].get(phase, 0.0) for entry in runs[name])
                                    for phase in runs[name][0]["phases"]}} for name in jobs}}
    if args.before:
        results["before"]["commit"] = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"],
                                                     capture_output=True, text=True).stdout.strip()
        results["before_over_floor"] = results["before"]["seconds"] / results["floor"]["seconds"]
    results["job_over_floor"] = results["job"]["seconds"] / results["floor"]["seconds"]
    results["feature_rate_job_over_floor"] = results["job"]["images_per_second"] / results["floor"]["images_per_second"]
    results["peak_job_over_floor"] = results["job"]["peak_mib"] / results["floor"]["peak_mib"]
    output = {**provenance(), "repeats": args.repeats, "results": results}
    report.save(args.output, "floor", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
