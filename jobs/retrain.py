"""Retrain on a schedule: `python -m jobs.retrain --registry DIR [training flags]`.

Trains a challenger when the training data or the configuration changed since the last run,
evaluates it and the current champion on the same held-out split, and promotes the challenger only
if it is better in --promote-metric by at least --min-improvement, better beyond chance (McNemar's test at
--significance) and loses no class's recall by more than --max-class-drop. Every run (skipped, rejected, promoted) is a row of
DIR/ledger.parquet; serving reads DIR/champion/model. Exit status: 0 done (whatever the decision),
1 distributed training failed, 2 bad input, 3 another retrain holds the registry, 130 interrupted.
"""
import argparse

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from jobs.cli import (add_field_arguments, add_quiet_argument, add_tracking_arguments, exit_after,
                      registry_mirror_from_args, run_command, settings_from_args, trackers_from_args)
from jobs.train import add_training_arguments, config_from_args
from tl_core.registry.promotion import PromotionRule


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.retrain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", required=True, help="registry directory (created on first use)")
    add_field_arguments(parser.add_argument_group("when a challenger replaces the champion (all must hold; "
                                                  "docs/retraining.md)"), PromotionRule)
    parser.add_argument("--keep", type=int, default=5,
                        help="model directories kept, newest first; the champion is always kept (default 5)")
    parser.add_argument("--force", action="store_true", help="retrain even if the data has not changed")
    parser.add_argument("--audit", choices=("record", "strict"), default="record", dest="audit_policy",
                        help="record: the ledger has each run's exact copies of validation images in train/ (leakage), "
                        "its exact-duplicate groups and, from the run's own audit, its validation images near a "
                        "training image and likely label errors; strict: also never promote a challenger whose validation images "
                        "overlap train/ (default record)")
    add_training_arguments(parser, exclude=("output_dir",))  # each challenger gets its own run directory
    add_tracking_arguments(parser, registry=True)
    add_quiet_argument(parser)
    args = parser.parse_args(argv)
    if args.keep < 1:
        parser.error(f"--keep must be at least 1, got {args.keep}")
    args.rule = settings_from_args(parser, args, PromotionRule)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from tl_core.registry.retrain import retrain

        retrain(config_from_args(args), args.registry, rule=args.rule, keep=args.keep,
                force=args.force, audit=args.audit_policy, trackers=trackers_from_args(args),
                mirror=registry_mirror_from_args(args))

    def note(error: BaseException) -> str | None:
        from tl_core.ray_session import RayUnreachable
        from tl_core.registry.store import RegistryBusy, RegistryUnusable
        from tl_core.tracking.mlflow_run import TrackingError

        # Refused before the registry was touched, or another retrain carries on: nothing to continue.
        return None if isinstance(error, (RegistryBusy, RegistryUnusable, RayUnreachable, TrackingError)) else \
            "The champion is unchanged; the next retrain continues this one."

    return run_command(body, note=note, quiet=args.quiet)


if __name__ == "__main__":
    exit_after(main)
