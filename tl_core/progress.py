"""Progress of long work, as a user watches it: a live bar on a terminal, a plain line now and then in a log.

On a terminal the bar is redrawn in place a few times a second:

  epoch 2/6 [########............]  800/2000 images  93 img/s  loss 0.4121  accuracy 0.8110  13s left (run 1m25s)

When the output is not a terminal (`ray job logs`, cron, CI) the same figures go out as a plain line
at most every LOG_INTERVAL seconds, and none for work shorter than that. `set_quiet(True)` (the
commands' --quiet) turns both off; the lines a command prints when work ends stay.
"""
import sys
import time

from tl_core import interrupts

LOG_INTERVAL = 15.0  # seconds between two progress lines in a log
BAR_INTERVAL = 0.2  # seconds between two redraws of the bar
BAR_WIDTH = 20

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    return _quiet


def format_duration(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Progress:
    """One piece of long work of `total` items: update(done, ...) as it goes, close() when it ends.

    figures: named numbers to show (e.g. the running loss), formatted only when a line is drawn, so
    they may be tensors whose value costs a device sync. after(eta) may add words after the time
    left in this piece of work (e.g. the time left in the whole run)."""

    def __init__(self, total: int, description: str, *, unit: str = "images", stream=None, clock=time.monotonic,
                 interactive: bool | None = None, after=None):
        self.total, self.description, self.unit, self.after = max(int(total), 0), description, unit, after
        self.stream = stream or sys.stdout
        self.clock = clock
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.enabled = not _quiet
        self.started = self.last_drawn = clock()
        self.done, self.drawn = 0, False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, done: int, **figures) -> None:
        """done: items finished so far (not an increment)."""
        self.done = min(int(done), self.total) if self.total else int(done)
        if not self.enabled:
            return
        now = self.clock()
        if now - self.last_drawn < (BAR_INTERVAL if self.interactive else LOG_INTERVAL):
            return
        self.last_drawn = now
        if self.interactive:
            self.stream.write("\r" + self.line(now, figures) + "\033[K")
            self.drawn = True
        else:
            self.stream.write(self.line(now, figures) + "\n")
        self.stream.flush()

    def advance(self, count: int, **figures) -> None:
        self.update(self.done + count, **figures)

    def rate(self, now: float | None = None) -> float:
        elapsed = (self.clock() if now is None else now) - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def seconds_left(self, now: float | None = None) -> float | None:
        rate = self.rate(now)
        return (self.total - self.done) / rate if rate > 0 and self.total else None

    def line(self, now: float, figures: dict) -> str:
        rate, left = self.rate(now), self.seconds_left(now)
        if self.interactive and self.total:
            filled = int(BAR_WIDTH * self.done / self.total)
            head = f"{self.description} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}]"
        else:
            head = self.description + ":"
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total and not self.interactive else ""
        parts = [f"{head} {count} {self.unit}{percent}", f"{rate:.0f} {self.unit}/s" if rate >= 10 else f"{rate:.1f} {self.unit}/s"]
        parts += [f"{name} {value}" if isinstance(value, int) else f"{name} {float(value):.4f}"
                  for name, value in figures.items()]
        if left is not None:
            parts.append(f"{format_duration(left)} left" + (f" {self.after(left)}" if self.after else ""))
        return "  ".join(parts) if self.interactive else ", ".join(parts)

    def close(self) -> None:
        """Clear the bar (the caller prints what the work ended with)."""
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


def labelled_batch_size(batch) -> int:
    """The examples in an (inputs, labels) batch, for track(size=...)."""
    return len(batch[1])


def track(elements, total: int, description: str, size=lambda element: 1, **options):
    """Iterate over elements, showing the progress through `total` items; size(element): the items in an
    element (one by default; labelled_batch_size for the pipeline's batches)."""
    with Progress(total, description, **options) as progress:
        for element in elements:
            interrupts.check()  # a safe point for a Ctrl-C or SIGTERM (tl_core/interrupts.py)
            yield element
            progress.advance(size(element))
