"""What every command does alike: SIGTERM taken as Ctrl-C, and one exit status per kind of failure.

  0    done
  1    distributed training (or an ingest on Ray) failed: Ray gave up after its restarts; or `--check` found bad files
       (jobs.train, jobs.ingest)
  2    bad input, configuration or file system: one line, `error: ...`, no stack trace (a run that stops on bad files)
  3    the model registry is busy (another retrain holds its lock)
  130  interrupted (Ctrl-C or SIGTERM)
"""
import signal
import sys
from typing import Callable

DISTRIBUTED_FAILURE, BAD_INPUT, BUSY, INTERRUPTED = 1, 2, 3, 130
CHECK_FOUND_BAD_FILES = 1


def is_ray_failure(error: BaseException) -> bool:
    """Ray wraps a worker's failure in its own exceptions (TrainingFailedError and friends)."""
    return type(error).__module__.split(".")[0] == "ray"


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _is_op_error(error: BaseException) -> bool:
    tensorflow = sys.modules.get("tensorflow")  # imported by the commands that need it, not here
    return tensorflow is not None and isinstance(error, tensorflow.errors.OpError)


def add_quiet_argument(parser) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress bar or progress lines: only the lines that "
                        "say what was done (for a terminal; in a log, progress is already one line per 15 s)")


def run_command(body: Callable[[], int | None], *, note: Callable[[BaseException], str | None] = lambda error: None,
                quiet: bool = False, ray_work: str = "distributed training") -> int:
    """Run a command's body; map what it raises to an exit status and a message on stderr.

    note(error) may add a line after the message (how to resume, what state things were left in).
    quiet: the command's --quiet (tl_core/progress.py). ray_work: what failed when Ray gives up, in its message."""
    from tl_core import interrupts, progress

    # Ctrl-C and a scheduler's SIGTERM alike: the epoch in progress is dropped, and the last completed epoch's
    # checkpoint (written atomically) is what --resume continues from. Never lost (tl_core/interrupts.py).
    interrupts.requested.clear()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, interrupts.stop)
    interrupts.redeliver_interrupts()

    progress.set_quiet(quiet)
    from tl_core.model.assets import AssetError
    from tl_core.registry.store import RegistryBusy

    def fail(status: int, message: str, error: BaseException) -> int:
        extra = note(error)
        print(message + (f"\n{extra}" if extra else ""), file=sys.stderr)
        return status

    try:
        return body() or 0
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
