"""Host-side decode features of the sibling methods (the serve/decode.py features interface).

  NgramFeatures  LongCat: `ngram_rows` [B, L, T], the hashed table rows of every new position,
                 from the last N tokens of each sequence (exact host hashing, data/ngram_ids.py)
  StemFeatures   STEM with its tables in host memory: `stem_rows` [S, U, F] and `stem_index`
                 [B, L], the rows of the step's distinct tokens, gathered on a thread as soon as
                 the tokens are known (models/stem.py HostStemRows)
STEM with its tables on the device needs no features (serve.lookup.TokenFeatures): its layers
index their tables by the token ids.
"""
from __future__ import annotations

import numpy as np

from scone_jax.data import ngram_ids
from scone_jax.serve.store import Done


class NgramFeatures:
  """Hash rows of new tokens: a prompt is one document (history stops at its start)."""

  def __init__(self, layout: ngram_ids.NgramTableLayout):
    self.layout = layout
    self.history_len = layout.max_n   # the new token and its N-1 predecessors

  def prompt(self, inputs_BxL: np.ndarray, valid_BxL: np.ndarray):
    rows = ngram_ids.NgramRows(self.layout)
    out = [rows({"inputs": x, "segment_ids": v.astype(np.int32)})["ngram_rows"]
           for x, v in zip(np.asarray(inputs_BxL), np.asarray(valid_BxL))]
    return Done({"ngram_rows": np.stack(out)})

  def step(self, history_BxH: np.ndarray):
    """history [B, N]: newest last, -1 before the document start."""
    h = np.asarray(history_BxH, np.int64)
    z = np.where((h < 0) | np.isin(h, self.layout.special_ids), 0, h)
    return Done({"ngram_rows": ngram_ids.fused_rows(self.layout, z[:, ::-1].T)[:, None]})


class StemFeatures:
  """STEM rows from host memory, one per distinct token of the step, fetched on a thread."""
  history_len = 1

  def __init__(self, tables_SxVxF: np.ndarray):
    from scone_jax.models.stem import HostStemRows
    self.host = HostStemRows(tables_SxVxF)

  def prompt(self, inputs_BxL: np.ndarray, valid_BxL: np.ndarray):
    return self.host.prefetch(inputs_BxL)

  def step(self, history_BxH: np.ndarray):
    return self.host.prefetch(np.asarray(history_BxH, np.int32)[:, -1:])

  def close(self) -> None:
    self.host.close()
