"""What tunebook says to a person while it works: one-line progress notes on stderr and progress bars.

Library modules report through here (never `print` to stderr themselves), so the prefix, the stream and the
flushing are decided once. Progress bars are *reporters* the caller passes in: a library pass takes a `Reporter`
and the CLI chooses a rich bar on a terminal or the silent default elsewhere."""
from __future__ import annotations

import sys
from typing import Callable


def say(msg: str) -> None:
    """One progress line, `tunebook: <msg>`, on stderr (stdout stays for a command's result)."""
    print(f"tunebook: {msg}", file=sys.stderr, flush=True)


class Reporter:
    """Progress callbacks for long passes; the default does nothing."""

    def start(self, description: str, total: int | None) -> Callable[[int], None]:
        """Begin a pass of `total` items; returns `advance(n)`."""
        return lambda n: None

    def done(self) -> None:
        """End the current pass."""


NULL_REPORTER = Reporter()


class RichReporter(Reporter):
    """A rich progress bar on stderr for each long pass."""

    def __init__(self, console):
        self.console = console
        self.progress = None

    def start(self, description, total):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.done()
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=self.console, transient=True)
        self.progress.start()
        task = self.progress.add_task(description, total=total)
        return lambda n: self.progress.advance(task, n) if self.progress else None

    def done(self):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def terminal_reporter() -> Reporter:
    """A rich bar when stderr is a terminal, else the silent reporter (logs and CI stay clean)."""
    from rich.console import Console

    con = Console(stderr=True)
    return RichReporter(con) if con.is_terminal else NULL_REPORTER
