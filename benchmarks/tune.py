"""A 32-trial search against single runs, on the same data in one run: `python -m benchmarks.tune`.

Each command is one process, timed whole as a user would time it (start-up, data check, backbone
passes, training, export), on the built-in sample (1400 / 600):
  - the seed's recipe (`jobs.train --recipe seed`: 6 augmented epochs), the yardstick for time;
  - 60 head epochs on cached features with the seed recipe's other settings, the yardstick for accuracy;
  - the default job (`jobs.train`);
  - `jobs.tune --trials N` (default 32): its features and trials (summary.json's phases), and in all with the
    final run.
Prints a Markdown table and writes JSON (--output, default benchmarks/results/tune.json).
"""
import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import report
from benchmarks.accuracy import REPO, run_recipe
from benchmarks.provenance import provenance

SINGLE_RUNS = {  # name -> flags of `python -m jobs.train`
    "seed recipe (`--recipe seed`)": ["--recipe", "seed"],
    "cached features, 60 epochs (`--recipe seed --no-augment --epochs 60`)": ["--recipe", "seed", "--no-augment",
                                                                              "--epochs", "60"],
    "default (`python -m jobs.train`)": [],
}


def run_search(trials: int, work: Path) -> dict:
    output = work / "search"
    command = [sys.executable, "-m", "jobs.tune", "--quiet", "--trials", str(trials), "--output-dir", str(output)]
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    summary = json.loads((output / "summary.json").read_text())
    # Everything but the final run: start-up, data check, Ray, features, trials, the outputs, shut-down.
    return {"accuracy": summary["final_validation_accuracy"], "seconds": seconds, "summary": summary,
            "search_seconds": seconds - summary["seconds"]["final_run"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "tune.json"))
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        for name, flags in SINGLE_RUNS.items():
            results[name] = run_recipe(flags, None, work)
            print(f"{name:75} accuracy {results[name]['accuracy']:.4f}  {results[name]['seconds']:.0f}s", flush=True)
        search = run_search(args.trials, work)
        print(f"jobs.tune --trials {args.trials}: accuracy {search['accuracy']:.4f}  {search['seconds']:.0f}s", flush=True)
    saved = {**provenance(), "single_runs": results, "search": search, "trials": args.trials}
    Path(args.output).write_text(json.dumps(saved, indent=2) + "\n")
    print(report.render("tune", saved))
    return 0


if __name__ == "__main__":
    sys.exit(main())
