"""Ctrl-C and SIGTERM in the commands, and exit signals that land where Python cannot raise them.

A signal handler runs between two bytecodes of the main thread, wherever it is, and the KeyboardInterrupt it raises
can be lost on the way: inside a weakref callback or a __del__ (TensorFlow and Keras run many: WeakSet._remove,
finalizers) Python prints it as "Exception ignored in ..." and carries on; inside a Python call that TensorFlow's C++
code makes (e.g. nest's Flatten importing a module), TensorFlow prints "SystemError: ... returned a result with an
exception set" and clears it (seen: the first in a Ray trial worker, the second in a search's final run, which went
on to finish and exit 0 after its SIGTERM); where that C++ code does not look, the process crashed (seen: SIGSEGV,
exit -11, after a SIGTERM in the default recipe's epochs). So a stop is always recorded (`requested`); inside
training (at_safe_points) it is only recorded, and raised at the safe points: before each epoch and after each batch,
in every tracked loop (progress.track: feature passes, validation), and at the end of training.
"""
import _thread
import contextlib
import os
import signal
import sys
import threading

INTERRUPTED = 130  # the exit status of a stopped command (jobs/cli.py)
requested = threading.Event()  # a Ctrl-C or SIGTERM came since the command started
_deferred = threading.Event()  # inside at_safe_points()
_redelivered = threading.Event()  # a stop lost in a callback, raised again through the handler
_reasons: list[Exception] = []  # why the command stops, when it was not a signal (stop_because)


def stop(signum, frame) -> None:
    """The commands' handler of SIGINT and SIGTERM (a scheduler's SIGTERM takes the same path as Ctrl-C): record the
    request and, outside at_safe_points(), raise KeyboardInterrupt where the main thread is. A second one ends the
    process at once, with the interrupt status: work that reaches no safe point for long (an export, a TFLite
    conversion, the audit, a stuck op) would otherwise need SIGKILL. Every file is written whole or not at all, so
    what is complete stays complete; the step that was running is lost, and --resume continues from the last epoch."""
    if _redelivered.is_set():  # the first one again (redeliver_interrupts), not a second
        _redelivered.clear()
        raise KeyboardInterrupt
    if requested.is_set():
        print("Interrupted again: stopping at once (what was complete stays so; the step that was running is lost).",
              file=sys.stderr, flush=True)
        os._exit(INTERRUPTED)
    requested.set()
    if not _deferred.is_set():
        raise KeyboardInterrupt


def stop_because(error: Exception) -> None:
    """From another thread of a command: stop it as a Ctrl-C does (at its next safe point in training), to end with
    error rather than as interrupted (jobs/cli.py reports reason()). Outside a command, whose SIGINT handler is not
    stop(), error is only kept: the caller raises it itself where it next acts (a registry's fenced writes)."""
    _reasons.append(error)
    if signal.getsignal(signal.SIGINT) is stop:
        _thread.interrupt_main(signal.SIGINT)


def reason() -> Exception | None:
    """The error a stop_because() gave, or None for a Ctrl-C or SIGTERM."""
    return _reasons[0] if _reasons else None


def reset() -> None:
    """At a command's start: no stop requested."""
    requested.clear()
    _reasons.clear()


def check() -> None:
    """A safe point: raise KeyboardInterrupt (or the error of stop_because) if a stop was requested."""
    if requested.is_set():
        raise reason() or KeyboardInterrupt


@contextlib.contextmanager
def at_safe_points():
    """Run TensorFlow-heavy work whose stops are raised only at check(), and once more when it ends."""
    outer = _deferred.is_set()
    _deferred.set()
    try:
        yield
    finally:
        if not outer:
            _deferred.clear()
    check()


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
            _redelivered.set()
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
