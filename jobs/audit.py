"""Audit a dataset before trusting a score: `python -m jobs.audit --help`.

  python -m jobs.audit --data-dir /data/pets --output-dir runs/audit-pets

Takes the data as jobs.train does (train/ and validation/ class folders or Parquet shards, or class folders split by
--validation-split and --seed; the built-in sample by default; any storage the job reads) and writes into
--output-dir: audit.json (counts, thresholds, what was checked), findings.parquet (one row per finding: kind, paths,
splits, classes, score, suggested class) and contact sheets (exact_duplicates.png, near_duplicates.png,
label_issues.png: each finding's images side by side, with their paths). Checks: exact duplicates (SHA-256 of the
bytes) across splits (leakage), under conflicting labels and within a class; near duplicates (the frozen backbone's
features, run once over every image: a resized or re-encoded copy); likely label errors (cleanlab's confident
learning on out-of-fold probabilities of the run's head); class balance. --exact-only skips the backbone.
"""
import argparse

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from tl_core.audit import AuditSettings
from tl_core.config import TrainConfig

from jobs.cli import add_field_arguments, add_quiet_argument, exit_after, given_fields, run_command, settings_from_args

DATA_FIELDS = ("data_dir", "validation_split", "seed", "cache_dir", "backbone", "image_size", "batch_size")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.audit", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_field_arguments(parser, TrainConfig, only=DATA_FIELDS)
    parser.add_argument("--output-dir", help="where the audit goes (default runs/audit-<UTC timestamp>)")
    parser.add_argument("--overwrite", action="store_true", help="write into an --output-dir that already holds files "
                        "(never a training run's directory)")
    add_field_arguments(parser, AuditSettings)
    parser.add_argument("--exact-only", action="store_true",
                        help="exact duplicates and class balance only: no backbone pass, no near duplicates or label check")
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    args.settings = settings_from_args(parser, args, AuditSettings)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from tl_core import storage
        from tl_core.audit import audit_sources, summary
        from tl_core.data.sources import load_splits
        from tl_core.model.assets import cache_dir
        from tl_core.run_dir import check_results_dir, default_output_dir

        output_dir = storage.local_path(args.output_dir or default_output_dir("audit-"), "--output-dir")
        check_results_dir(output_dir, overwrite=args.overwrite, what="the audit", data_dir=args.data_dir)
        config = TrainConfig(**given_fields(args, TrainConfig))
        train, validation, data_dir = load_splits(config.data, cache_dir(config.cache_dir))
        report = audit_sources(config, {"train": train, "validation": validation}, data_dir, output_dir,
                            args.settings,
                            exact_only=args.exact_only)
        print(summary(report, output_dir))

    return run_command(body, quiet=args.quiet)


if __name__ == "__main__":
    exit_after(main)
