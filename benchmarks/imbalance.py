"""Imbalanced classes: each way the job can treat class frequency (`--class-balance`), side by side, on long-tailed
and balanced data. `python -m benchmarks.imbalance` (about 15 minutes on 2 cores).

Datasets: the built-in sample (2 classes) and the handwritten digits (10 classes, benchmarks/digits.py). Each in
three training profiles, the validation split left as it is (balanced): the original, and long-tailed at ratio 10
and 50 (class k of K keeps n x ratio^(-k / (K - 1)) of its n training images, a geometric profile; which images
is seeded and fixed). Every method trains the default recipe (cached features, 60 head epochs) with seeds 0, 1
and 2; the backbone's features of each dataset are computed once and each run is given those of its images
(train(features=...), as jobs.tune's final run is), so only the head differs. Reported: the mean over seeds of
validation balanced accuracy (the mean of the classes' recall), accuracy and macro-F1, and each method's gain over
`none` (the plain loss). Writes JSON (--output) and prints the docs' table (benchmarks/report.py: "imbalance").
"""
import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import tensorflow as tf  # noqa: F401  (provenance reads its version)

from benchmarks import report
from benchmarks.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
METHODS = ("none", "weights", "logit_adjust")
PROFILES = {"balanced": 1, "ratio 10": 10, "ratio 50": 50}


def long_tailed_rows(labels: np.ndarray, ratio: float, seed: int = 0) -> np.ndarray:
    """Rows of a long-tailed subset: class k of K keeps round(n_k x ratio^(-k / (K - 1))) of its n_k rows (at least
    1), chosen at random (seeded); in the source's order."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    kept = []
    for k, label in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        count = max(1, round(len(rows) * ratio ** (-k / max(len(classes) - 1, 1))))
        kept.append(rng.choice(rows, count, replace=False))
    return np.sort(np.concatenate(kept))


def run(config, sources, features, rows: np.ndarray, work: Path) -> dict:
    import dataclasses

    from tl_core.data.sources import Sources
    from tl_core.run_dir import prepare_run_dir
    from tl_core.data.feature_sets import InMemoryFeatures, PrecomputedFeatures
    from tl_core.training.train import train

    train_source = sources["train"].select(rows)
    config = prepare_run_dir(dataclasses.replace(config, output_dir=str(work)))
    precomputed = PrecomputedFeatures(InMemoryFeatures(features["train"][rows], train_source.labels),
                                      features["validation"])
    metrics = train(config, sources=Sources(train_source, sources["validation"], config.data_dir, 0), features=precomputed,
                    trackers=[])
    return {name: metrics[name] for name in ("accuracy", "balanced_accuracy", "macro_f1")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.imbalance", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "imbalance.json")
    args = parser.parse_args(argv)
    from benchmarks.digits import write_digits_dataset
    from tl_core.audit import backbone_features
    from tl_core.config import TrainConfig
    from tl_core.data.sources import data_directory, load_splits
    from tl_core.model.assets import cache_dir

    results = {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        datasets = {"sample": data_directory(None, cache_dir(None)), "digits": str(write_digits_dataset(work / "digits"))}
        for name, data_dir in datasets.items():
            base = TrainConfig(data_dir=data_dir, audit=False)
            train, validation, _ = load_splits(base.data, cache_dir(None))
            sources = {"train": train, "validation": validation}
            features = backbone_features(base.backbone_pass, sources)
            for profile, ratio in PROFILES.items():
                rows = long_tailed_rows(train.labels, ratio) if ratio > 1 else np.arange(len(train))
                counts = np.bincount(train.labels[rows], minlength=len(train.class_names))
                entry = results.setdefault(name, {})[profile] = {"train_images_per_class": counts.tolist(), "methods": {}}
                for method in METHODS:
                    runs = [run(TrainConfig(data_dir=data_dir, audit=False, seed=seed, class_balance=method), sources,
                                features, rows, work / f"{name}-{profile}-{method}-{seed}".replace(" ", "-"))
                            for seed in args.seeds]
                    entry["methods"][method] = {"runs": runs, **{metric: statistics.mean(run_[metric] for run_ in runs)
                                                                for metric in runs[0]}}
                    print(f"{name} {profile} ({counts.max()}:{counts.min()}) {method}: balanced accuracy "
                          f"{entry['methods'][method]['balanced_accuracy']:.4f}, accuracy "
                          f"{entry['methods'][method]['accuracy']:.4f}", flush=True)
    output = {**provenance(), "seeds": args.seeds, "results": results}
    report.save(args.output, "imbalance", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
