"""Progress bars on stderr (rich), one style for every command.

    with progress_bar("matching", total=num_docs, enabled=args.progress or None) as bar:
      for doc in docs:
        ...
        bar.advance()

`enabled`: True shows the bars even when stderr is not a TTY (a command's --progress), False
never shows them (library calls, tests), None shows them when stderr is a TTY. Hidden bars are
rich's own `disable=True`, and advancing one costs a branch.
Several bars, one after another or at once, come from `progress_bars()`:

    with progress_bars(enabled=...) as bars:
      reading = bars.task("reading", total=None)
      ...
      reading.finish()
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from rich import progress as rp
from rich.console import Console


class Task:
  """One bar of a Bars."""

  def __init__(self, progress: rp.Progress, task_id: rp.TaskID):
    self._progress, self._id = progress, task_id
    self._shown = not progress.disable

  def advance(self, n: float = 1) -> None:
    if self._shown:
      self._progress.advance(self._id, n)

  def describe(self, description: str) -> None:
    """Changes the text in front of the bar (the stage it is in)."""
    if self._shown:
      self._progress.update(self._id, description=description)

  def finish(self) -> None:
    """Marks the bar complete at what it has counted (a bar of unknown total stops pulsing)."""
    if self._shown:
      done = next(t.completed for t in self._progress.tasks if t.id == self._id) or 1
      self._progress.update(self._id, total=done, completed=done)


class Bars:
  """The bars of one progress display; `task()` adds one."""

  def __init__(self, progress: rp.Progress):
    self._progress = progress

  def task(self, description: str, total: float | None = None) -> Task:
    """A new bar; total None: unknown (the bar pulses until finish())."""
    return Task(self._progress, self._progress.add_task(description, total=total))


@contextlib.contextmanager
def progress_bars(*, enabled: bool | None = None, transient: bool = False) -> Iterator[Bars]:
  """A progress display on stderr for the `with` block; transient: erased when it ends."""
  shown = sys.stderr.isatty() if enabled is None else enabled
  with rp.Progress(rp.SpinnerColumn(), rp.TextColumn("{task.description}"), rp.BarColumn(),
                   rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TimeRemainingColumn(),
                   console=Console(stderr=True), transient=transient, disable=not shown) as progress:
    yield Bars(progress)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None = None, *, enabled: bool | None = None,
                 transient: bool = False) -> Iterator[Task]:
  """One bar on stderr for the `with` block (see progress_bars for `enabled` and `transient`)."""
  with progress_bars(enabled=enabled, transient=transient) as bars:
    yield bars.task(description, total)
