"""Search the head's hyperparameters with Ray Tune: `python -m jobs.tune --help`.

The frozen backbone runs once per training and validation image; every trial then trains only the
head on those features, scored on a tuning split of the training images (k-fold for small datasets),
and ASHA stops poor trials early. The best configuration (best_config.json: `jobs.train --config`
and `jobs.retrain --config` take it) is trained once on all training images into <output-dir>/final,
and the validation set is used there, once. Training flags set the base configuration every trial
starts from (data, backbone, seed, and the head settings the search space leaves fixed).
"""
import argparse
import dataclasses

import tl_core  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
from jobs.cli import (add_field_arguments, add_quiet_argument, add_tracking_arguments, exit_after, given_fields,
                      flag_of, ray_job_tags, run_command)
from jobs.train import add_training_arguments, config_from_args
from tl_core.config import TrainConfig
from tl_core.tuning.search import TuneSettings


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.tune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_field_arguments(parser.add_argument_group("the search"), TuneSettings)
    add_training_arguments(parser.add_argument_group("the base configuration (flags of jobs.train)"))
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the interrupted search in --output-dir with its "
                      "saved settings (no other flag may be given)")
    mode.add_argument("--overwrite", action="store_true", help="replace the search in --output-dir")
    add_tracking_arguments(parser)
    add_quiet_argument(parser)
    return parser.parse_args(argv)


def search_tracking(args: argparse.Namespace):
    """The search in MLflow (a parent run; the trials and the final run its children), with a tracking URI; else None."""
    from tl_core.tracking.mlflow_run import tracking_uri

    uri = tracking_uri(args.tracking_uri)
    if not uri:
        return None
    from tl_core.tracking.mlflow_search import MlflowSearch

    return MlflowSearch(uri, args.experiment, tags=ray_job_tags())


def settings_from_args(args: argparse.Namespace) -> TuneSettings:
    return TuneSettings(**given_fields(args, TuneSettings))


def main(argv=None) -> int:
    args = parse_args(argv)
    output_dir = None

    def body() -> None:
        nonlocal output_dir
        from tl_core.run_dir import default_output_dir
        from tl_core.tuning.search import search

        if args.resume:
            given = [flag_of(field) for settings in (TuneSettings, TrainConfig) for field in dataclasses.fields(settings)
                     if field.name != "output_dir" and field.name in given_fields(args, settings)]
            given += ["--config"] * bool(args.config) + ["--recipe"] * (args.recipe != "default")
            if given:
                raise ValueError(f"--resume continues a search with its saved settings: give only --output-dir "
                                 f"(got {' '.join(given)})")
            if not args.output_dir:
                raise ValueError("--resume needs the search directory: --output-dir runs/X")
        config = config_from_args(argparse.Namespace(**{**vars(args), "resume": False}))
        config = dataclasses.replace(config, output_dir=config.output_dir or default_output_dir())
        output_dir = config.output_dir
        summary = search(config, settings_from_args(args), resume=args.resume, overwrite=args.overwrite,
                         tracking=search_tracking(args))
        print(f"Final model: validation accuracy {summary['final_validation_accuracy']:.4f} "
              f"(best trial's tuning accuracy {summary['best_tuning_accuracy']:.4f}); search in {config.output_dir}, "
              f"final run in {config.output_dir}/final, {summary['seconds']['total']:.0f}s in all")

    def note(error: BaseException) -> str | None:
        from tl_core import storage
        from tl_core.tuning.search import SEARCH_FILE

        try:
            started = output_dir is not None and storage.exists(storage.join(output_dir, SEARCH_FILE))
        except storage.StorageError:  # the store is gone: the search's files stay in it
            started = True
        if not started:
            return None  # nothing was started: bad input, or a refused directory
        return f"Continue the search with:\n  python -m jobs.tune --resume --output-dir {output_dir}"

    return run_command(body, note=note, quiet=args.quiet)


if __name__ == "__main__":
    exit_after(main)
