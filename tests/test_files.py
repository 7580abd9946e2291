"""scone_jax.files (atomic writes) and scone_jax.progress (bars on stderr)."""
from __future__ import annotations

import json
import os
import pathlib
import stat

import pytest

from scone_jax.files import atomic_directory, atomic_write_json, atomic_write_text
from scone_jax.progress import progress_bar, progress_bars


def _mode(path) -> int:
  return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_json_is_json_dump_and_leaves_nothing_on_failure(tmp_path):
  path = tmp_path / "meta.json"
  obj = {"b": [1, 2], "a": {"x": 0.5}}
  atomic_write_json(str(path), obj, indent=2, sort_keys=True)
  assert path.read_text() == json.dumps(obj, indent=2, sort_keys=True)
  umask = os.umask(0)
  os.umask(umask)
  assert _mode(path) == 0o666 & ~umask
  with pytest.raises(TypeError):
    atomic_write_json(str(path), {"not json": object()})
  assert json.loads(path.read_text()) == obj   # the old file, whole
  atomic_write_text(str(path), "new")
  assert path.read_text() == "new" and os.listdir(tmp_path) == ["meta.json"]


def test_atomic_directory_replaces_only_when_the_block_finishes(tmp_path):
  out = tmp_path / "fg"
  with atomic_directory(str(out)) as staging:
    pathlib.Path(staging, "a").write_text("1")
    assert not out.exists()
  assert (out / "a").read_text() == "1"
  with pytest.raises(RuntimeError):
    with atomic_directory(str(out)) as staging:
      pathlib.Path(staging, "b").write_text("2")
      raise RuntimeError("interrupted")
  assert os.listdir(out) == ["a"] and os.listdir(tmp_path) == ["fg"]
  with atomic_directory(str(out)) as staging:
    pathlib.Path(staging, "b").write_text("2")
  assert os.listdir(out) == ["b"] and os.listdir(tmp_path) == ["fg"]
  umask = os.umask(0)
  os.umask(umask)
  assert _mode(out) == 0o777 & ~umask   # not mkdtemp's 0700
  with atomic_directory(str(tmp_path / "new" / "deeper" / "fg")):
    pass
  assert os.listdir(tmp_path / "new" / "deeper" / "fg") == []


def test_hidden_bars_print_nothing_and_shown_bars_go_to_stderr(capfd):
  with progress_bar("counting", 3, enabled=False) as bar:
    bar.advance()
    bar.describe("still counting")
    bar.finish()
  assert capfd.readouterr() == ("", "")
  with progress_bars(enabled=True) as bars:
    reading = bars.task("reading")
    reading.advance(5)
    reading.finish()
  out, err = capfd.readouterr()
  assert out == "" and "reading" in err and "5/5" in err
