"""The commands in results/*/COMMANDS.md paste into bash as they are: each splits (shlex, as a POSIX
shell does) into a scone-jax sub-command this CLI has, and every --gin.NAME=VALUE word holds a
value gin parses (a string binding keeps its inner quotes: "--gin.DATA_DIR='/data'")."""
from __future__ import annotations

import glob
import os
import re
import shlex

import gin.config
import pytest

from scone_jax.compare import shell_join

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FILES = sorted(glob.glob(os.path.join(ROOT, "results", "**", "COMMANDS.md"), recursive=True))


def _commands(text: str) -> list[str]:
  """The scone-jax command lines of a COMMANDS.md: code-block lines and `...` table cells."""
  found = re.findall(r"`(scone-jax [^`]+)`", text)
  for block in re.findall(r"```\n(.*?)```", text, re.S):
    found += [line for line in block.splitlines() if line.startswith("scone-jax ")]
  return found


def _subcommands() -> set[str]:
  from scone_jax.cli import COMMANDS
  return set(COMMANDS)


@pytest.mark.parametrize("path", FILES, ids=[os.path.relpath(p, ROOT) for p in FILES])
def test_commands_paste_into_bash(path):
  commands = _commands(open(path).read())
  assert commands, f"{path}: no scone-jax command found"
  known = _subcommands()
  for line in commands:
    words = shlex.split(line)
    assert words[0] == "scone-jax" and words[1] in known, line[:120]
    for word in words:
      if word.startswith("--gin.") and "=" in word:
        name, value = word[len("--gin."):].split("=", 1)
        try:
          gin.config.parse_value(value)
        except Exception as e:   # noqa: BLE001 - any parse failure is the finding
          raise AssertionError(f"{os.path.relpath(path, ROOT)}: --gin.{name}={value} is not a gin value once bash "
                               f"has split the line ({e}); quote it as \"--gin.{name}='{value}'\"") from e


def test_shell_join_round_trips_through_shlex():
  for argv in (["train", "--gin.DATA_DIR='/tmp/d'", "--workdir", "/tmp/a b"], ["x", "it's $HOME", 'say "hi"', ""]):
    assert shlex.split(shell_join(argv)) == argv
  assert shell_join(["--gin.DATA_DIR='/d'"]) == "\"--gin.DATA_DIR='/d'\""
