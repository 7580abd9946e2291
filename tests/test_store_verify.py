"""`scone-jax store verify`: a block rewritten behind the export's back (valid crc32c, other bytes:
what the disk tier cannot see) is found and named; `--repair` + the same export rewrites exactly
that block and the store equals the original again."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorstore as ts

from scone_jax.cli import main
from scone_jax.export import layout as L
from tests.helpers import TINY_ROWS_PER_SHARD


def _rows(store: str) -> np.ndarray:
  return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{store}/embeddings"}}).result().read().result()


def _rewrite_block(store: str, block: int) -> None:
  """Writes other (valid) rows over one block through tensorstore: every chunk keeps a valid crc32c."""
  array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{store}/embeddings"}}).result()
  lo = block * TINY_ROWS_PER_SHARD
  hi = min(lo + TINY_ROWS_PER_SHARD, array.shape[0])
  part = array[lo:hi].read().result()
  array[lo:hi].write(part[::-1].copy()).result()


@pytest.fixture
def store(tmp_path, tiny_scone_run):
  path = str(tmp_path / "store")
  shutil.copytree(tiny_scone_run["store"], path)
  return path


def test_a_good_store_verifies(store, capsys):
  assert main(["store", "verify", store]) == 0
  out = capsys.readouterr().out
  assert "3 blocks" in out and "match their hashes" in out, out


def test_a_rewritten_block_is_named_and_the_store_refused(store, capsys):
  _rewrite_block(store, 1)
  assert main(["store", "verify", store]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "blocks [1] (1 of 3)" in err[0] and "--repair" in err[0], err


def test_an_edited_manifest_is_refused(store, capsys):
  """The manifest lives in the group's zarr.json attributes with its sha256: an edit there (here
  its dtype) is one line, for verify as for every reader."""
  path = os.path.join(store, "zarr.json")
  with open(path) as f:
    group = json.load(f)
  group["attributes"][L.MANIFEST_ATTR]["dtype"] = "float16"
  with open(path, "w") as f:
    json.dump(group, f)
  assert main(["store", "verify", store]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "the manifest does not match its sha256" in err[0], err


@pytest.mark.slow
def test_repair_then_export_rewrites_only_the_bad_block(store, tiny_scone_run, capsys):
  original = _rows(store)
  _rewrite_block(store, 2)
  assert not np.array_equal(_rows(store), original)
  assert main(["store", "verify", store, "--repair"]) == 2
  assert "rerun the same" in capsys.readouterr().err
  kv = L.open_root(store)
  assert L.read_attributes(kv, L.GROUP) == {} and L.block_key(2) not in [bytes(k).decode() for k in kv.list().result()]
  assert not os.path.exists(os.path.join(store, "progress", "block-00000002"))   # no empty group dir left
  assert main(["export", "--dtype", "float32", "--workdir", tiny_scone_run["workdir"], "--out", store,
               "--rows_per_shard", str(TINY_ROWS_PER_SHARD)]) == 0
  assert "1 blocks written, 2 resumed" in capsys.readouterr().out
  np.testing.assert_array_equal(_rows(store), original)
  assert main(["store", "verify", store, "--workdir", tiny_scone_run["workdir"]]) == 0
