"""Inspect a model registry and restore an earlier champion.

  python -m jobs.registry list --registry DIR            the ledger, one row per retrain
  python -m jobs.registry rollback RUN_ID --registry DIR  make RUN_ID's model the champion again

With MLflow (--tracking-uri, or $MLFLOW_TRACKING_URI), both also set MLflow's champion alias as the ledger says.
"""
import argparse

from jobs.cli import add_registry_mirror_arguments, exit_after, registry_mirror_from_args, run_command


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.registry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list", help="print the ledger as a table")
    listing.add_argument("--registry", required=True)
    add_registry_mirror_arguments(listing)
    rollback = commands.add_parser("rollback", help="make an earlier run's model the champion")
    rollback.add_argument("run_id")
    rollback.add_argument("--registry", required=True)
    add_registry_mirror_arguments(rollback)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def body() -> None:
        from tl_core.registry.retrain import restore
        from tl_core.registry import existing_registry
        from tl_core.registry.store import format_ledger

        mirror = registry_mirror_from_args(args)
        if mirror:
            mirror.check()
        if args.command == "list":
            registry = existing_registry(args.registry)
            print(format_ledger(registry.records()))
            print(f"champion: {registry.champion() or '-'} ({registry.champion_model()})")
            if mirror:
                mirror.sync_or_warn(registry)
        else:
            restore(args.registry, args.run_id, mirror=mirror)

    return run_command(body)


if __name__ == "__main__":
    exit_after(main)
