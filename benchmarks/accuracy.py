"""Accuracy against wall time, recipe by recipe, on the same data in one run: `python -m benchmarks.accuracy`.

Each recipe is one `python -m jobs.train` process, timed whole as a user would time it (start-up,
data check, backbone passes, training, export), on:
  - sample: the built-in cats-vs-dogs silhouettes (1400 / 600);
  - digits: scikit-learn's handwritten digits, 10 classes (1258 / 539; benchmarks/digits.py, needs `.[bench]`).
Times are relative to the seed's recipe in the same run (the common yardstick: fastai's figures
below were measured next to it, at 2.0x its time). Writes JSON (--output, default
benchmarks/results/accuracy.json) and prints the docs' table of it (benchmarks/report.py).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.provenance import provenance

REPO = Path(__file__).resolve().parents[1]

RECIPES = {  # name -> flags of `python -m jobs.train`
    "seed recipe (`--recipe seed`)": ["--recipe", "seed"],
    "default": [],
    "seed recipe, `--fine-tune-epochs 4`": ["--recipe", "seed", "--fine-tune-epochs", "4"],
    "cached features, no augmentation, 60 epochs": ["--recipe", "seed", "--no-augment", "--epochs", "60"],
    "feature bank, 4 views (1 plain + 3 augmented)": ["--augment", "--feature-views", "4"],
    "seed recipe + `--adapt-batchnorm`": ["--recipe", "seed", "--adapt-batchnorm"],
}
# fastai vision_learner + fit_one_cycle(6), measured by the author on the sample (not a dependency here).
FASTAI_SAMPLE = {"accuracy": 0.975, "relative_time": 2.0}


def run_recipe(flags: list[str], data_dir: str | None, work: Path) -> dict:
    output = work / f"run-{len(list(work.iterdir()))}"
    command = [sys.executable, "-m", "jobs.train", "--quiet", "--output-dir", str(output), *flags]
    if data_dir:
        command += ["--data-dir", data_dir]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    metrics = json.loads((output / "metrics.json").read_text())
    return {"accuracy": metrics["accuracy"], "seconds": seconds, "flags": flags}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["sample", "digits"], choices=["sample", "digits"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES), metavar="NAME")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "accuracy.json"))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for dataset in args.datasets:
            data_dir = None
            if dataset == "digits":
                from benchmarks.digits import write_digits_dataset

                data_dir = str(write_digits_dataset(work / "digits"))
            runs = work / f"runs-{dataset}"
            runs.mkdir()
            results[dataset] = {}
            for name in args.recipes:
                results[dataset][name] = run_recipe(RECIPES[name], data_dir, runs)
                print(f"{dataset:7} {name:50} accuracy {results[dataset][name]['accuracy']:.4f}  "
                      f"{results[dataset][name]['seconds']:.0f}s", flush=True)
    saved = {**provenance(), "results": results, "fastai_sample": FASTAI_SAMPLE}
    Path(args.output).write_text(json.dumps(saved, indent=2) + "\n")
    print(report.render("accuracy", saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
