"""Exit signals that land where Python cannot raise them.

A signal handler runs between two bytecodes of the main thread, wherever it is. When that is inside a weakref
callback or a __del__ (TensorFlow and Keras run many: WeakSet._remove, finalizers), the exception the handler raises
cannot propagate: Python prints it, stack trace and all, as "Exception ignored in ..." and carries on as if no signal
had come. Seen in both places this module covers: a search's Ray Tune trial printing SystemExit from Ray's SIGTERM
handler, and (the same mechanism) a command's Ctrl-C or SIGTERM being lost.
"""
import _thread
import sys
import threading


def _install(handle) -> None:
    if getattr(sys.unraisablehook, "handles_exit_signals", False):
        return
    report = sys.unraisablehook

    def hook(unraisable):
        if not isinstance(unraisable.exc_value, (SystemExit, KeyboardInterrupt)) or not handle(unraisable):
            report(unraisable)

    hook.handles_exit_signals = True
    sys.unraisablehook = hook


def redeliver_interrupts() -> None:
    """In a command's process: a Ctrl-C or SIGTERM (taken as KeyboardInterrupt) that lands in a callback is raised
    again, quietly, so the command still stops: from another thread, a moment later (_thread.interrupt_main), so that
    the main thread takes it once it has left the callback and this hook (in another callback: once more)."""
    def handle(unraisable) -> bool:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            later = threading.Timer(0.05, _thread.interrupt_main)
            later.daemon = True
            later.start()
            return True
        return False

    _install(handle)


def drop_exit_signals_in_callbacks() -> None:
    """In a Ray worker (call first in code that runs there): Ray stops a worker with SIGTERM, whose handler raises
    SystemExit; landing in a callback it is dropped quietly (Ray ends the process either way) instead of printed, as
    the worker's output, on the driver's console."""
    _install(lambda unraisable: True)
