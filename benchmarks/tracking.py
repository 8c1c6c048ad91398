"""The default job with MLflow tracking against the same job without, side by side: `python -m benchmarks.tracking`.

Whole `python -m jobs.train` processes on the built-in sample (the default recipe: one backbone pass, 60 head epochs),
alternated: without MLflow, then with `--tracking-uri` pointing at a real `mlflow server` on 127.0.0.1
(benchmarks/mlflow_server.py: SQLite backend store, local artifacts), medians of --repeats runs each. The tracked
run logs its parameters, one request of metrics per epoch, its files and the model (a ~10 MB SavedModel uploaded
through the server). Loopback has no network latency: a remote server adds its round trips. Writes JSON (--output).
"""
import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import tensorflow as tf  # noqa: F401  (provenance reads its version)

from benchmarks import report
from benchmarks.mlflow_server import MlflowServer
from benchmarks.provenance import provenance

REPO = Path(__file__).resolve().parents[1]


def run_job(output_dir: Path, *tracking: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.train", "--output-dir", str(output_dir), "--quiet", *tracking], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, timeout=3600)
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, alternated (default 3)")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "tracking.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "mlflow").mkdir()
        server = MlflowServer(work / "mlflow")
        try:
            seconds = {"off": [], "mlflow": []}
            for repeat in range(args.repeats):
                seconds["off"].append(run_job(work / f"off-{repeat}"))
                seconds["mlflow"].append(run_job(work / f"mlflow-{repeat}", "--tracking-uri", server.uri))
                print(f"repeat {repeat + 1}/{args.repeats}: {seconds['off'][-1]:.1f} s without, "
                      f"{seconds['mlflow'][-1]:.1f} s with MLflow", flush=True)
        finally:
            server.stop()
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    results = {**provenance(), "repeats": args.repeats,
               "results": {"seconds": medians, "runs": seconds, "mlflow_over_off": medians["mlflow"] / medians["off"]}}
    report.save(args.output, "tracking", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
