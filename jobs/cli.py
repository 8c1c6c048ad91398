"""What every command does alike: SIGTERM taken as Ctrl-C, and one exit status per kind of failure.

  0    done
  1    distributed training (or an ingest on Ray) failed: Ray gave up after its restarts; or `--check` found bad files
       (jobs.train, jobs.ingest)
  2    bad input, configuration or file system: one line, `error: ...`, no stack trace (a run that stops on bad files)
  3    the model registry is busy (another retrain holds its lock, or took it over from this one)
  130  interrupted (Ctrl-C or SIGTERM; a second one ends the command at once)
"""
import argparse
import dataclasses
import os
import signal
import sys
import typing
from typing import Callable, NoReturn

from tl_core import interrupts

DISTRIBUTED_FAILURE, BAD_INPUT, BUSY = 1, 2, 3
INTERRUPTED = interrupts.INTERRUPTED  # 130, as a shell reports a process Ctrl-C ended
CHECK_FOUND_BAD_FILES = 1
# How long a command's exit waits for a thread still writing to the store (an epoch's upload that began before the end).
STORE_WAIT_SECONDS = 60


def is_ray_failure(error: BaseException) -> bool:
    """Ray wraps a worker's failure in its own exceptions (TrainingFailedError and friends)."""
    return type(error).__module__.split(".")[0] == "ray"


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _is_op_error(error: BaseException) -> bool:
    tensorflow = sys.modules.get("tensorflow")  # imported by the commands that need it, not here
    return tensorflow is not None and isinstance(error, tensorflow.errors.OpError)


def flag_of(field: dataclasses.Field) -> str:
    return field.metadata.get("flag", f"--{field.name.replace('_', '-')}")


def add_field_arguments(parser: argparse.ArgumentParser, settings_class, exclude=(), only=None) -> None:
    """A flag per field of a settings dataclass (TrainConfig, TuneSettings, PromotionRule, AuditSettings: fields declared
    with config.option; or per field named in `only`), made from the field's documentation; an unset flag is None (the
    default, or --config's value, applies). given_fields reads them back; the dataclass checks the values."""
    groups = {}
    for field in dataclasses.fields(settings_class):
        if field.name in exclude or field.metadata.get("command_line") is False or (only and field.name not in only):
            continue
        meta, name = field.metadata, field.name.replace("_", "-")
        group = parser if "group" not in meta else groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        kind = next((t for t in typing.get_args(field.type) if t is not type(None)), field.type)
        shown = f"{field.default:g}" if isinstance(field.default, float) else field.default
        default = f" (default {shown})" if field.default is not None and kind is not bool else ""
        flag = flag_of(field)  # --field-name, or another name: PromotionRule.metric is --promote-metric
        if "const" in meta:  # e.g. --skip-bad-files sets bad_files to "skip"
            group.add_argument(flag, dest=field.name, action="store_const", const=meta["const"], help=meta["help"])
        elif meta.get("negative"):  # on by default: only --no-<name> is offered
            group.add_argument(f"--no-{name}", dest=field.name, action="store_false", default=None, help=meta["help"])
        elif kind is bool and (meta.get("negatable") or field.default is None):  # --name / --no-name
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, help=meta["help"])
        elif kind is bool:
            group.add_argument(flag, dest=field.name, action="store_true", default=None, help=meta["help"])
        else:
            group.add_argument(flag, dest=field.name, type=kind, choices=meta.get("choices"), help=meta["help"] + default)


def given_fields(args: argparse.Namespace, settings_class) -> dict:
    """The settings whose flags were given."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(settings_class)
            if getattr(args, field.name, None) is not None}


def settings_from_args(parser: argparse.ArgumentParser, args: argparse.Namespace, settings_class):
    """The settings the given flags describe (defaults for the rest); a value the dataclass refuses ends the command
    as a bad flag does (argparse's one line, status 2)."""
    try:
        return settings_class(**given_fields(args, settings_class))
    except ValueError as error:
        parser.error(str(error))


TRACKING_URI_HELP = ("an MLflow tracking server (http://host:5000) or store (sqlite:///path/mlflow.db) to record runs in "
                     "(default: $MLFLOW_TRACKING_URI; neither: no MLflow)")
REGISTERED_MODEL_HELP = "MLflow's registered model mirroring the registry (default: the registry folder's name)"


def add_tracking_arguments(parser, registry: bool = False) -> None:
    """--tracking-uri, --experiment and, for a command with a --registry, --registered-model."""
    group = parser.add_argument_group("tracking in MLflow (needs pip install -e '.[mlflow]')")
    group.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    group.add_argument("--experiment", default="tl-job", help="the MLflow experiment of the runs (default tl-job)")
    if registry:
        group.add_argument("--registered-model", help=REGISTERED_MODEL_HELP)


def trackers_from_args(args) -> list:
    """What records the run: TensorBoard's files always, MLflow with a tracking URI (a Ray job's submission id as a tag)."""
    from tl_core.tracking.tensorboard import TensorBoard
    from tl_core.tracking.mlflow_run import MLflow, tracking_uri

    uri = tracking_uri(getattr(args, "tracking_uri", None))
    return [TensorBoard()] + ([MLflow(uri, args.experiment, tags=ray_job_tags())] if uri else [])


def add_registry_mirror_arguments(parser) -> None:
    parser.add_argument("--tracking-uri", help=TRACKING_URI_HELP)
    parser.add_argument("--registered-model", help=REGISTERED_MODEL_HELP)


def registry_mirror_from_args(args):
    """MLflow's registry mirroring the project's (--registry), with a tracking URI; else None."""
    from tl_core.tracking.mlflow_run import tracking_uri

    uri = tracking_uri(args.tracking_uri)
    if not uri:
        return None
    from tl_core.tracking.mlflow_registry import MlflowRegistry

    return MlflowRegistry(uri, args.registered_model or args.registry.rstrip("/").rsplit("/", 1)[-1])


def ray_job_tags() -> dict:
    """The submission id of the Ray job this command runs as (`ray job submit`), from the environment Ray gives it."""
    import json
    import os

    try:
        submission = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}"))["metadata"]["job_submission_id"]
    except (KeyError, TypeError, ValueError):
        return {}
    return {"ray_job_submission_id": submission}


def add_quiet_argument(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines: only the lines that "
                        "say what was done (for a terminal; in a log, progress is already one line per 15 s)")


def run_command(body: Callable[[], int | None], *, note: Callable[[BaseException], str | None] = lambda error: None,
                quiet: bool = False, ray_work: str = "distributed training") -> int:
    """Run a command's body; map what it raises to an exit status and a message on stderr.

    note(error) may add a line after the message (how to resume, what state things were left in).
    quiet: the command's --quiet (tl_core/progress.py). ray_work: what failed when Ray gives up, in its message."""
    from tl_core import progress

    # Ctrl-C and a scheduler's SIGTERM alike: the epoch in progress is dropped, and the last completed epoch's
    # checkpoint (written atomically) is what --resume continues from. Never lost (tl_core/interrupts.py).
    interrupts.reset()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, interrupts.stop)
    interrupts.redeliver_interrupts()

    progress.set_quiet(quiet)
    from tl_core.model.assets import AssetError
    from tl_core.registry.store import RegistryBusy

    def fail(status: int, message: str, error: BaseException) -> int:
        extra = note(error)
        disconnect_ray()
        print(message + (f"\n{extra}" if extra else ""), file=sys.stderr)
        return status

    try:
        try:
            return body() or 0
        except KeyboardInterrupt:
            if interrupts.reason() is None:
                raise
            raise interrupts.reason() from None  # stopped by the command itself (a registry's lock lost)
    except KeyboardInterrupt as error:
        return fail(INTERRUPTED, "Interrupted.", error)
    except Exception as error:
        if isinstance(error, RegistryBusy):
            return fail(BUSY, f"error: {error}", error)
        if _is_op_error(error):  # TensorFlow's own message, first line: e.g. a file that filled the disk
            return fail(BAD_INPUT, f"error: {error.message.strip().splitlines()[0]}", error)
        if isinstance(error, (ValueError, AssetError, OSError)):  # the project's input errors are ValueErrors
            return fail(BAD_INPUT, f"error: {error}", error)
        if is_ray_failure(error):
            return fail(DISTRIBUTED_FAILURE, f"error: {ray_work} failed: {first_line(error)}", error)
        raise


def disconnect_ray() -> None:
    """End this process's Ray session, if it has one, so that no Ray worker's log line, which Ray forwards to the
    driver's stderr a moment late, lands after the command's last lines (the resume command a user copies).
    Ray's exit handler would do the same a moment later; the command's files do not depend on it."""
    ray = sys.modules.get("ray")  # imported by the commands that use Ray, not here
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def exit_after(main: Callable[[], int]) -> NoReturn:
    """A command's process: exit with main()'s status, after what would crash in the interpreter's teardown is shut
    down in order (storage.shut_down: a crash there would replace the status that a scheduler's retry policy acts on)."""
    from tl_core import storage

    try:
        status = main()
    except BaseException:
        storage.shut_down(STORE_WAIT_SECONDS)  # then the traceback or SystemExit as usual
        raise
    if not storage.shut_down(STORE_WAIT_SECONDS):
        print(f"warning: a write to the store was still running after {STORE_WAIT_SECONDS}s; exiting without it",
              file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)
