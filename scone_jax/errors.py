"""Errors a user can cause. The CLI prints them as one line and exits with status 2."""


class UserError(Exception):
  """Bad input: the message names the input and what to do about it."""
