"""Host-side input features of SCONE at inference: match each new token, fetch its f-gram row.

Two sources of f-gram embeddings, one interface (see serve/decode.py, "Input features"):
  StoreFeatures       rows of the exported table E_f from a store tier (RAM, disk, remote);
                      batches carry `fgram_index` [B, L] and `unique_rows` [U, D]
  FgramModelFeatures  `--store none`: the distinct f-grams' tokens, A_f runs on the device;
                      batches carry `fgram_index`, `unique_tokens` [U, K], `unique_lengths` [U]
Both find matches with the training matcher (fgram/matcher.py): a whole prompt with `match`,
each new token with `match_last` (at most K-1 probes), and deduplicate per batch, so every
distinct f-gram of a step is fetched once, by one read. `StoreRows` is the same for
`scone-jax eval --store`: a pipeline batch feature in place of experiment.DistinctFgrams.
"""
from __future__ import annotations

import numpy as np

from scone_jax.errors import UserError
from scone_jax.fgram.matcher import ExactMatcher, dedup_batch
from scone_jax.serve.store import Done, FgramStore, Mapped


def matcher_from_tokens(fgram_tokens: np.ndarray) -> ExactMatcher:
  """The exact matcher over f-grams given as rows of ids right-padded with -1 ([S, K])."""
  valid = fgram_tokens >= 0
  offsets = np.zeros(len(fgram_tokens) + 1, np.int64)
  np.cumsum(valid.sum(axis=1), out=offsets[1:])
  return ExactMatcher.from_arrays(fgram_tokens[valid], offsets, fgram_tokens.shape[1])


def _pad_rows(rows: np.ndarray, count: int) -> np.ndarray:
  out = np.zeros((count,) + rows.shape[1:], rows.dtype)
  out[:len(rows)] = rows
  return out


class _Matching:
  """Matching shared by both sources: prompts and new tokens -> f-gram ids per position."""

  def __init__(self, matcher: ExactMatcher):
    self.matcher = matcher
    self.history_len = matcher.max_n   # a match ends at the newest token and spans <= K tokens

  def prompt(self, inputs_BxL: np.ndarray, valid_BxL: np.ndarray):
    """Features of right-padded prompts ([BOS, x_1, ...]; valid marks real positions)."""
    fgram_id, _ = self.matcher.match(inputs_BxL, valid_BxL.astype(np.int32))
    return self.features(fgram_id, inputs_BxL.size)

  def step(self, history_BxH: np.ndarray):
    """Features of each row's newest token; history holds the last tokens, newest last, -1 before
    the document start."""
    fgram_id, _ = self.matcher.match_last(history_BxH)
    return self.features(fgram_id[:, None], len(history_BxH))

  def features(self, fgram_id: np.ndarray, max_unique: int):
    raise NotImplementedError


class StoreFeatures(_Matching):
  """f-gram rows from an exported store. Matches with the store's own keys unless a matcher is
  given (the run's, built from the same fgrams.parquet)."""

  def __init__(self, store: FgramStore, matcher: ExactMatcher | None = None):
    super().__init__(matcher or matcher_from_tokens(store.fgram_tokens))
    self.store = store

  def features(self, fgram_id, max_unique):
    unique_ids, index, n = dedup_batch(fgram_id, max_unique)
    pending = self.store.fetch(unique_ids[:n])
    return Mapped(pending, lambda rows: {"fgram_index": index, "unique_rows": _pad_rows(rows, max_unique)})


class FgramModelFeatures(_Matching):
  """`--store none`: the distinct f-grams' tokens; the device computes their rows with A_f."""

  def __init__(self, vocab, matcher: ExactMatcher | None = None):
    from scone_jax.export.writer import fgram_token_matrix
    super().__init__(matcher or ExactMatcher(vocab))
    tokens, lengths = fgram_token_matrix(vocab)
    self.tokens = np.concatenate([tokens, np.full((1, tokens.shape[1]), -1, np.int32)])  # last: padding
    self.lengths = np.concatenate([lengths, [0]]).astype(np.int32)

  def features(self, fgram_id, max_unique):
    unique_ids, index, _ = dedup_batch(fgram_id, max_unique)
    rows = np.where(unique_ids >= 0, unique_ids, len(self.lengths) - 1)
    return Done({"fgram_index": index, "unique_tokens": self.tokens[rows], "unique_lengths": self.lengths[rows]})


class StoreRows:
  """Pipeline batch feature for `eval --store`: the batch's distinct f-grams' rows from a store
  (padded to a static U), with per-position indices offset for the process's part of the
  concatenated list, as experiment.DistinctFgrams does for A_f."""

  def __init__(self, store: FgramStore, max_unique: int, offset: int = 0):
    self.store, self.max_unique, self.offset = store, max_unique, offset

  def __call__(self, batch: dict) -> dict:
    try:
      unique_ids, index, n = dedup_batch(batch["fgram_id"], self.max_unique)
    except ValueError as e:
      raise UserError(f"a batch has more distinct f-grams than FgramConfig.max_unique={self.max_unique}: "
                      "raise it (0 = a bound that never overflows)") from e
    rows = _pad_rows(self.store.fetch(unique_ids[:n]).result(), self.max_unique)
    index = np.where(index >= 0, index + self.offset, -1).astype(np.int32)
    return {**batch, "fgram_index": index, "unique_rows": rows}


class TokenFeatures:
  """The baseline (and any model whose input is T[x] alone): no features beyond the tokens."""
  history_len = 1

  def prompt(self, inputs_BxL, valid_BxL):
    return Done({})

  def step(self, history_BxH):
    return Done({})
