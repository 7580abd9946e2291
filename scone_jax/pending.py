"""Pending values: what a host-side fetch returns before its data is needed.

Anything with `.result()` is a Pending (a tensorstore future, a concurrent.futures.Future, or
these two). Decode features return them so the host can start a read and collect it later.
"""
from __future__ import annotations


class Done:
  """A Pending whose value is already there."""

  def __init__(self, value):
    self._value = value

  def result(self):
    return self._value


class Mapped:
  """A Pending that applies `fn` to another Pending's value."""

  def __init__(self, pending, fn):
    self._pending, self._fn = pending, fn

  def result(self):
    return self._fn(self._pending.result())
