"""Progress on long work: a rich bar on a terminal (bytes/s, ETA, running ratio), silence otherwise."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class Reporter:
    """No-op reporter, used when not on a terminal, with --no-progress or -q."""

    def start(self, label: str, total: int) -> None: ...

    def file(self, name: str, size: int) -> None: ...

    def advance(self, n: int) -> None: ...

    def file_done(self, size: int, stored: int) -> None: ...

    def stop(self) -> None: ...


class RichReporter(Reporter):
    """Overall bar plus the current file, with the running compression ratio."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")))
        self.progress: Progress | None = None
        self.size = self.stored = 0

    def start(self, label: str, total: int) -> None:
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[ratio]}"), console=self.console, transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(label, total=total, ratio="")
        self.file_task = self.progress.add_task("", total=1, ratio="", visible=False)

    def file(self, name: str, size: int) -> None:
        if self.progress:
            self.progress.update(self.file_task, description=f"  {name}", total=max(size, 1), completed=0,
                                 visible=True)

    def advance(self, n: int) -> None:
        if self.progress:
            self.progress.advance(self.task, n)
            self.progress.advance(self.file_task, n)

    def file_done(self, size: int, stored: int) -> None:
        self.size += size
        self.stored += stored
        if self.progress and self.size:  # re-sync: per-stream advances are only approximately file bytes
            ratio = f"ratio {self.stored / self.size:.1%}" if self.stored else ""
            self.progress.update(self.task, completed=self.size, ratio=ratio)

    def stop(self) -> None:
        if self.progress:
            self.progress.stop()
            self.progress = None


def make_reporter(quiet: bool, no_progress: bool) -> Reporter:
    if quiet or no_progress or not sys.stderr.isatty():
        return Reporter()
    return RichReporter()
