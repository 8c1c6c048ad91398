"""The data audit measured: what it finds of problems planted where the truth is known, what its search costs at
scale, and what it adds to a default run. `python -m benchmarks.audit` (about 15 minutes on 2 cores).

quality  Copies of the built-in sample (28 px silhouettes), of the handwritten digits (8 px, benchmarks/digits.py) and
         of photos (500x375 JPEGs, 6 classes, benchmarks/photos.py) with planted problems:
         exact copies of validation images in train/ (same class), resized-and-re-encoded copies of validation images
         in train/ (enlarged x2 to x8, or shrunk to 0.85 of their size, then JPEG quality 75-95), and 5 % of the
         training images moved into another class's folder. The audit (its defaults, the built-in backbone) runs on
         each; reported: the share of each kind it finds, and how many of its findings are wrong:
           - exact: a `leakage` finding holding the copy and its source;
           - near: a `near_leakage` finding pairing the copy with its source. A finding the planting added (one that
             holds a planted copy) is right when it pairs the copy with its source, with another copy of that source,
             or with an image the audit also pairs with the source itself (the data's own near copies); else wrong;
           - label issues: a moved image among the issues is right; any other issue counts as wrong.
         The near-duplicate threshold is swept over the same features (recall and precision per threshold).
search   The near-duplicate search alone on synthetic features (1280-d, non-negative like the backbone's, with a
         near copy of every 100th row), 10k and 100k images, each in a fresh process (no TensorFlow): seconds and
         peak memory, beside the memory of the features themselves.
run      The default job (`python -m jobs.train`, whole processes) with its audit and with --no-audit, alternated
         (ABBA), medians of --repeats; also the audit's own seconds as the run logs them.

Writes JSON (--output) and prints the docs' table (benchmarks/report.py: "audit").
"""
import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tl_core  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
import numpy as np
import pyarrow.parquet as pq

from benchmarks import report
from benchmarks.provenance import provenance

REPO = Path(__file__).resolve().parents[1]
THRESHOLDS = (0.80, 0.85, 0.90, 0.95, 0.97, 0.98)
MOVED_SHARE = 0.05
EXACT, ENLARGED, SHRUNK = 20, 30, 30  # planted copies of validation images, of each kind


def re_encoded(path: Path, scale: float, quality: int) -> bytes:
    """The image at path resized by scale (at least 8 pixels a side) and encoded as a JPEG."""
    import tensorflow as tf

    image = tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False)
    size = [max(8, round(side * scale)) for side in image.shape[:2]]
    resized = tf.image.resize(image, size, antialias=True)
    return tf.io.encode_jpeg(tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8), quality=quality).numpy()


def plant(original: Path, root: Path, seed: int = 0) -> dict:
    """A copy of original (train/ and validation/ class folders) at root with planted problems; the truth:
    {"exact"|"enlarged"|"shrunk": [(copy, source)], "moved": [(path now, its true class)]}."""
    shutil.copytree(original, root)
    rng = np.random.default_rng(seed)
    validation = sorted((root / "validation").glob("*/*"))
    sources = [validation[i] for i in rng.choice(len(validation), EXACT + ENLARGED + SHRUNK, replace=False)]
    truth = {"exact": [], "enlarged": [], "shrunk": [], "moved": []}
    for index, source in enumerate(sources):
        kind = "exact" if index < EXACT else "enlarged" if index < EXACT + ENLARGED else "shrunk"
        folder = root / "train" / source.parent.name
        if kind == "exact":
            copy = folder / f"copy_{index:03d}{source.suffix}"
            shutil.copy(source, copy)
        else:
            scale = rng.uniform(2, 8) if kind == "enlarged" else 0.85
            copy = folder / f"copy_{index:03d}.jpg"
            copy.write_bytes(re_encoded(source, scale, int(rng.integers(75, 96))))
        truth[kind].append((str(copy), str(source)))
    train = sorted(path for path in (root / "train").glob("*/*") if not path.name.startswith("copy_"))
    classes = sorted(path.name for path in (root / "train").iterdir())
    for i in rng.choice(len(train), round(MOVED_SHARE * len(train)), replace=False):
        path = train[i]
        other = rng.choice([name for name in classes if name != path.parent.name])
        moved = root / "train" / other / path.name
        shutil.move(path, moved)
        truth["moved"].append((str(moved), path.parent.name))
    return truth


def near_scores(findings: list[dict], truth: dict) -> dict:
    """Recall per kind of planted copy and the precision of the findings the planting added."""
    source_of = {copy: source for kind in ("exact", "enlarged", "shrunk") for copy, source in truth[kind]}
    pairs = {frozenset(finding["paths"]) for finding in findings}
    own = {frozenset(pair) for pair in pairs if not pair & source_of.keys()}  # the data's own near pairs
    added = [pair for pair in pairs if pair & source_of.keys()]

    def right(pair: frozenset) -> bool:
        copy = next(iter(pair & source_of.keys()))
        other = next(iter(pair - {copy}), copy)
        source = source_of[copy]
        return other == source or source_of.get(other) == source or frozenset((source, other)) in own

    recall = {kind: sum(frozenset((copy, source)) in pairs for copy, source in truth[kind]) / len(truth[kind])
              for kind in ("enlarged", "shrunk")}
    wrong = sum(not right(pair) for pair in added)
    return {"recall": recall, "added_findings": len(added), "wrong": wrong,
            "precision": (len(added) - wrong) / len(added) if added else None}


def quality(name: str, original: Path, work: Path) -> dict:
    from tl_core.audit import AuditSettings, audit, backbone_features
    from tl_core.audit.near import near_duplicates
    from tl_core.config import TrainConfig
    from tl_core.data.sources import load_splits
    from tl_core.model.assets import cache_dir

    root = work / f"{name}-planted"
    truth = plant(original, root)
    config = TrainConfig(data_dir=str(root))
    train, validation, data_dir = load_splits(config.data, cache_dir(None))
    sources = {"train": train, "validation": validation}
    started = time.perf_counter()
    features = backbone_features(config.backbone_pass, sources)
    feature_seconds = time.perf_counter() - started
    started = time.perf_counter()
    audited = audit(sources, data_dir, work / f"{name}-audit", AuditSettings(), features=features, head=config.head_recipe)
    audit_seconds = time.perf_counter() - started
    findings = pq.read_table(work / f"{name}-audit" / "findings.parquet").to_pylist()
    exact = [frozenset(f["paths"]) for f in findings if f["kind"] == "leakage"]
    exact_found = sum(any({copy, source} <= group for group in exact) for copy, source in truth["exact"])
    moved = {path for path, _ in truth["moved"]}
    issues = [f["paths"][0] for f in findings if f["kind"] == "label_issue"]
    names = {split: [str(path) for path in source.paths] for split, source in sources.items()}

    def same_file(a, b) -> bool:  # byte-identical pairs are exact findings, not near ones
        return Path(names[a[0]][a[1]]).read_bytes() == Path(names[b[0]][b[1]]).read_bytes()

    sweep = {}
    for threshold in THRESHOLDS:
        pairs = [{"paths": [names[split][row] for split, row in finding["rows"]]}
                 for finding in near_duplicates(features, threshold, same_bytes=same_file) if finding["kind"] == "near_leakage"]
        sweep[f"{threshold:.2f}"] = near_scores(pairs, truth)
    near_findings = [f for f in findings if f["kind"] == "near_leakage"]
    return {"images": audited["images"], "planted": {kind: len(pairs) for kind, pairs in truth.items()},
            "exact_recall": exact_found / len(truth["exact"]),
            "near": near_scores(near_findings, truth), "near_threshold": AuditSettings.near_threshold,
            "near_sweep": sweep,
            "label_issues": {"reported": len(issues), "moved_found": len(moved & set(issues)),
                             "recall": len(moved & set(issues)) / len(moved),
                             "precision": len(moved & set(issues)) / len(issues) if issues else None},
            "seconds": {"features": feature_seconds, "audit": audit_seconds}}


def search_child(count: int) -> None:
    """In a fresh process: the search over `count` synthetic feature rows; prints JSON."""
    from tl_core.audit.near import similar_pairs

    rng = np.random.default_rng(0)
    features = np.maximum(rng.standard_normal((count, 1280), dtype=np.float32), 0)
    copies = np.arange(0, count - 1, 100)
    features[copies + 1] = features[copies] + 0.05 * np.abs(rng.standard_normal((len(copies), 1280), dtype=np.float32))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    pairs = similar_pairs(features, 0.95, neighbours=10)
    seconds = time.perf_counter() - started
    found = {(i, j) for i, j, _ in pairs}
    print(json.dumps({"images": count, "seconds": seconds, "features_mib": features.nbytes / 2**20,
                      "peak_mib_before_search": before,
                      "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "planted_pairs_found": sum((int(i), int(i) + 1) in found for i in copies) / len(copies)}))


def search(counts) -> list[dict]:
    results = []
    for count in counts:
        done = subprocess.run([sys.executable, "-m", "benchmarks.audit", "--search-child", str(count)], cwd=REPO,
                              check=True, capture_output=True, text=True, timeout=3600)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"search over {count} images: {results[-1]['seconds']:.1f} s, peak {results[-1]['peak_mib']:.0f} MiB",
              flush=True)
    return results


def run_job(output_dir: Path, *flags: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "jobs.train", "--output-dir", str(output_dir), "--quiet", *flags], cwd=REPO,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=3600)
    return time.perf_counter() - started


def run_cost(work: Path, repeats: int) -> dict:
    seconds, audit_seconds = {"audit": [], "no_audit": []}, []
    for repeat in range(repeats):
        for which in (("no_audit", "audit") if repeat % 2 == 0 else ("audit", "no_audit")):  # ABBA: no order favoured
            seconds[which].append(run_job(work / f"{which}-{repeat}", *(["--no-audit"] if which == "no_audit" else [])))
        audit_seconds.append(json.loads((work / f"audit-{repeat}" / "metrics.json").read_text())["audit"]["seconds"])
        print(f"repeat {repeat + 1}/{repeats}: {seconds['no_audit'][-1]:.1f} s with --no-audit, {seconds['audit'][-1]:.1f} s "
              f"with the audit ({audit_seconds[-1]:.1f} s of it)", flush=True)
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {"seconds": medians, "runs": seconds, "audit_seconds": statistics.median(audit_seconds),
            "audit_over_no_audit": medians["audit"] / medians["no_audit"],
            "audit_share_of_run": statistics.median(audit_seconds) / medians["audit"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="default runs with and without the audit (default 3)")
    parser.add_argument("--search-sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--parts", nargs="+", choices=["quality", "search", "run"], default=["quality", "search", "run"])
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "audit.json")
    parser.add_argument("--search-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.search_child:
        search_child(args.search_child)
        return 0
    from benchmarks.digits import write_digits_dataset
    from benchmarks.photos import write_photo_dataset
    from tl_core.data.sources import data_directory
    from tl_core.model.assets import cache_dir

    results = json.loads(args.output.read_text())["results"] if args.output.exists() else {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if "quality" in args.parts:
            datasets = {"sample": Path(data_directory(None, cache_dir(None))),
                        "digits": write_digits_dataset(work / "digits"),
                        "photos": write_photo_dataset(work / "photos", {"train": 150, "validation": 50})}
            results["quality"] = {}
            for name, original in datasets.items():
                results["quality"][name] = quality(name, original, work)
                print(f"{name}: {json.dumps(results['quality'][name])}", flush=True)
        if "search" in args.parts:
            results["search"] = search(args.search_sizes)
        if "run" in args.parts:
            results["run"] = run_cost(work, args.repeats)
    output = {**provenance(), "repeats": args.repeats, "results": results}
    report.save(args.output, "audit", output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
