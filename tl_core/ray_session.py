"""Ray as every command uses it: one connection, and SIGTERM still meaning what the command says it means.

ray.init() replaces the process's SIGTERM handler with its own (sys.exit(15)): a command that started Ray would then
end on a scheduler's SIGTERM with status 15, without its resume hint. connect() keeps the command's handler
(jobs/cli.py: SIGTERM is taken as Ctrl-C), also while ray.init() itself runs.
"""
import signal

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

