"""Ray as every command uses it: one connection, and SIGTERM still meaning what the command says it means.

ray.init() replaces the process's SIGTERM handler with its own (sys.exit(15)): a command that started Ray would then
end on a scheduler's SIGTERM with status 15, without its resume hint. connect() keeps the command's handler
(jobs/cli.py: SIGTERM is taken as Ctrl-C), also while ray.init() itself runs.
"""
import signal
import sys

import ray


def connect() -> None:
    """Connect to the cluster of $RAY_ADDRESS / `ray job submit`, else start Ray on this machine (once per process)."""
    if ray.is_initialized():
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        ray.init()
    except SystemExit as stop:
        if stop.code == signal.SIGTERM:  # ray.init's own handler: the command was asked to stop while Ray started
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGTERM, handler)


def quiet_exit_signals_in_callbacks() -> None:
    """Call first in code that runs in a Ray worker. Ray stops a worker with SIGTERM, whose handler raises SystemExit
    in the worker's main thread. When it lands in a weakref callback or a __del__ (seen: WeakSet._remove, after Ray Tune
    stopped an interrupted search's trials), Python cannot raise it there and prints it, stack trace and all, as
    "Exception ignored in ...": the driver shows that as the worker's output. Such an exit signal is dropped quietly;
    every other unraisable exception is reported as before."""
    if getattr(sys.unraisablehook, "quiet_exit_signals", False):
        return
    report = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)):
            report(unraisable)

    hook.quiet_exit_signals = True
    sys.unraisablehook = hook
