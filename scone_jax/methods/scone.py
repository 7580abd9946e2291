"""SCONE (docs/METHODS.md 1): f-gram embeddings from an f-gram model A_f, offloaded after training.

Everything the method is, in one place:
  FgramConfig        its gin config (V_f from an f-gram file, A_f's shape, distinct f-grams/batch)
  FgramModel         A_f: the f-gram's token embeddings T[x_j..x_i] (right-padded to K) plus a
                     learned absolute position table, L_f causal decoder blocks of the main
                     design (ModelConfig's mlp, norm, bias and positions: RoPE in its blocks
                     only where the main model has it; at width d_f, with d -> d_f and
                     d_f -> d projections when d_f != d) and a final norm of the main
                     design's kind; the output at the f-gram's last position is its
                     embedding. Causal attention makes right-padding exact.
  SconeEmbedding     the model's input embedding: A_f's output where an f-gram matches (it
                     replaces T[x_i]: no add, no gate), else T[x_i]
  MatchDocument      pipeline document feature: the length of the longest f-gram ending at every
                     input of a whole document (exact matcher), or read from TAGS (`fgrams tag`)
  History            pipeline document feature: the K-1 inputs before every input, so that every
                     matched f-gram's tokens are known even where a row starts inside it
  DistinctFgrams     pipeline batch feature: the batch's distinct f-grams, padded to a static U,
                     with `fgram_index` [B, L] into them, and their A_f inputs (`unique_tokens`
                     [U, K], `unique_lengths` [U]) or their rows of an exported table
                     (`unique_rows` [U, D], `eval --store`)
  FgramDecodeFeatures the same per decode step: matches of a prompt (`match`) or of each new
                     token (`match_last`, <= K-1 probes), deduplicated, rows from A_f's inputs or
                     from a store tier
  Scone              the resolved method: vocabulary, accounting (A_f training-only; E_f
                     offloaded: |V_f| x d entries), A_f's training FLOPs
Per batch, A_f runs once per distinct f-gram, so its cost scales with U, not with B x L.
"""
from __future__ import annotations

import dataclasses
from typing import ClassVar

import gin
import jax.numpy as jnp
import numpy as np
from flax import nnx

from scone_jax import config as C, parallel
from scone_jax.config import ModelConfig
from scone_jax.data import shards
from scone_jax.errors import UserError
from scone_jax.fgram import packing, tags, vocab as fgram_vocab
from scone_jax.fgram.matcher import ExactMatcher, dedup_batch
from scone_jax.methods.base import Method
from scone_jax.models.accounting import decoder_forward_flops
from scone_jax.models.layers import FGRAM_AXES, make_norm, param
from scone_jax.models.transformer import BlockStack
from scone_jax.parallel import constrain
from scone_jax.pending import Done, Mapped


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FgramConfig:
  """SCONE: the f-gram vocabulary V_f and the f-gram model A_f (docs/METHODS.md 1.3).

  Widths of 0 mean "as the main model". `size` keeps the first `size` f-grams of the file: a
  prefix of the global ranking is exactly V_f for that S, so one file serves a |V_f| sweep."""
  fgram_dir: str = ""
  size: int = 0                 # |V_f| used (0 = every f-gram in the file)
  num_layers: int = 1           # L_f
  d_model: int = 0              # d_f
  num_heads: int = 0
  num_kv_heads: int = 0
  d_ff: int = 0
  max_unique: int = 0           # planned distinct f-grams per process batch (`compile`); 0 = never-overflowing bound
  max_n: int = 0                # planned K: lets `compile` size a run with no f-gram file (else the file's K)
  tags_dir: str = ""            # TAGS: match lengths precomputed by `fgrams tag` (fgram/tags.py); "" = match here
  row_len: int = 0              # slots per packed A_f row (fgram/packing.py); 0 = 4K rounded up to a multiple of 8
  buckets: int = 4              # static A_f batch shapes chosen from the data (one compile each)
  sample_batches: int = 32      # batches read at start to choose them

  RANGES: ClassVar[dict] = {"size": (0, None), "num_layers": (1, None), "d_model": (0, None), "num_heads": (0, None),
                            "num_kv_heads": (0, None), "d_ff": (0, None), "max_unique": (0, None), "max_n": (0, None),
                            "row_len": (0, None), "buckets": (1, None), "sample_batches": (1, None)}

  def model_config(self, main: ModelConfig) -> ModelConfig:
    """A_f's block design: the main model's, at A_f's own width and depth."""
    d = self.d_model or main.d_model
    heads = self.num_heads or main.num_heads
    return dataclasses.replace(
        main, d_model=d, num_layers=self.num_layers, num_heads=heads,
        num_kv_heads=self.num_kv_heads or min(main.num_kv_heads, heads),
        head_dim=0 if self.d_model or self.num_heads else main.head_dim,
        d_ff=self.d_ff or (main.d_ff * d) // main.d_model)


# -- the model ---------------------------------------------------------------------------------
class FgramModel(nnx.Module):
  def __init__(self, main: ModelConfig, fcfg: FgramConfig, max_n: int, rngs: nnx.Rngs):
    cfg = fcfg.model_config(main)
    self.cfg, self.max_n = cfg, max_n
    d, df = main.d_model, cfg.d_model
    self.positions = param(rngs, nnx.initializers.normal(cfg.init_std), (max_n, df), ("fgram_pos", "fgram_embed"))
    self.in_proj = nnx.data(None)
    self.out_proj = nnx.data(None)
    if df != d:
      # Sharded over `embed` only (fsdp): a second fsdp dimension would be one mesh axis twice.
      self.in_proj = param(rngs, nnx.initializers.lecun_normal(), (d, df), ("embed", None))
      self.out_proj = param(rngs, nnx.initializers.lecun_normal(), (df, d), ("fgram_embed", None))
    self.blocks = BlockStack(cfg, rngs, num_layers=cfg.num_layers, names=FGRAM_AXES, d_model=df)
    self.final_norm = make_norm(cfg, df, rngs, axis="fgram_embed")

  def __call__(self, token_emb_UxKxD, lengths_U):
    """token_emb [U, K, D] (right-padded), lengths [U] in 2..K -> f-gram embeddings [U, D]."""
    dt = jnp.dtype(self.cfg.dtype)
    u, k, _ = token_emb_UxKxD.shape
    x = token_emb_UxKxD.astype(dt)
    if self.in_proj is not None:
      x = jnp.einsum("ukd,de->uke", x, self.in_proj[...].astype(dt))
    x = x + self.positions[...][:k].astype(dt)[None]
    x = constrain(x, ("unique_fgrams", None, None))
    positions = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (u, k))
    h, _ = self.blocks(x, positions, jnp.ones((u, k), jnp.int32))
    last = jnp.clip(lengths_U - 1, 0, k - 1)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return self._out(h_last, dt)

  def packed(self, token_emb_RxPxD, positions_RxP, spans_RxP, ends_RxJ):
    """f-grams packed into rows as prefix trees (fgram/packing.py): token embeddings [R, P, D],
    depths and subtree spans [R, P], the slot of each row's j-th f-gram's last token [R, J] ->
    embeddings [R*J, D] (list index r*J + j). Each slot attends to its ancestors and itself
    (packing.tree_mask), so every f-gram gets what it gets alone (right-padded to K)."""
    dt = jnp.dtype(self.cfg.dtype)
    r, p, _ = token_emb_RxPxD.shape
    x = token_emb_RxPxD.astype(dt)
    if self.in_proj is not None:
      x = jnp.einsum("rpd,de->rpe", x, self.in_proj[...].astype(dt))
    x = x + jnp.take(self.positions[...].astype(dt), jnp.clip(positions_RxP, 0, self.max_n - 1), axis=0)
    x = constrain(x, ("unique_fgrams", None, None))
    h, _ = self.blocks(x, positions_RxP, packing.tree_mask(spans_RxP, jnp))
    h_last = jnp.take_along_axis(h, ends_RxJ[:, :, None], axis=1)   # row-local: no gather across devices
    return self._out(h_last.reshape(r * ends_RxJ.shape[1], -1), dt)

  def _out(self, h_last, dt):
    h_last = self.final_norm(h_last)
    if self.out_proj is not None:
      h_last = jnp.einsum("ue,ed->ud", h_last, self.out_proj[...].astype(dt))
    return h_last


class SconeEmbedding(nnx.Module):
  """The input embedding of a SCONE model: A_f's output where an f-gram matches, else T[x]."""

  def __init__(self, main: ModelConfig, fcfg: FgramConfig, max_n: int, rngs: nnx.Rngs):
    self.fgram_model = FgramModel(main, fcfg, max_n, rngs)

  def fgram_embeddings(self, model, unique_tokens_UxK, unique_lengths_U):
    """A_f over a list of f-grams given by their token ids ([U, K], -1 padded): [U, D]."""
    token_emb = model.embed_tokens(jnp.maximum(unique_tokens_UxK, 0))
    return self.fgram_model(token_emb, jnp.maximum(unique_lengths_U, 1))

  def __call__(self, model, batch):
    token_emb = model.embed_tokens(batch["inputs"])
    if "unique_rows" in batch:   # rows of an exported table E_f (decode, eval --store): A_f is not run
      fgram_emb_UxD = batch["unique_rows"]
    elif "unique_packed_tokens" in batch:   # training and eval: the distinct f-grams packed into rows
      fgram_emb_UxD = self.fgram_model.packed(model.embed_tokens(batch["unique_packed_tokens"]),
                                              batch["unique_packed_positions"], batch["unique_packed_spans"],
                                              batch["unique_packed_ends"])
    else:   # decode and export: f-grams right-padded to K
      fgram_emb_UxD = self.fgram_embeddings(model, batch["unique_tokens"], batch["unique_lengths"])
    index = batch["fgram_index"]
    gathered = jnp.take(fgram_emb_UxD.astype(token_emb.dtype), jnp.maximum(index, 0), axis=0)
    out = jnp.where((index >= 0)[..., None], gathered, token_emb)
    return constrain(out, ("batch", "length", "act_embed"))


# -- host-side features ------------------------------------------------------------------------
class MatchDocument:
  """Document feature: the length of the longest f-gram ending at every input of a whole
  document ([BOS] + its tokens; 1 = no match), before the document is cut into rows, so a
  position at the start of a row that continues a document matches as in the whole document.
  `fgrams tag` writes the same numbers to disk (fgram/tags.py): training then reads them."""
  fields = ("match_len",)

  def __init__(self, matcher: ExactMatcher):
    self.matcher = matcher

  def __call__(self, doc: dict) -> dict:
    _, match_len = self.matcher.match(doc["inputs"])
    return {**doc, "match_len": match_len.astype(np.int32)}


class History:
  """Document feature: the K-1 inputs before every input (-1 before the document start): with
  `match_len` they give every matched f-gram's tokens, x_{i-n+1..i}, even where a row starts
  inside the f-gram. No vocabulary needed."""
  fields = ("history",)

  def __init__(self, max_n: int):
    self.width = max_n - 1

  def __call__(self, doc: dict) -> dict:
    x = doc["inputs"]
    padded = np.concatenate([np.full(self.width, -1, np.int32), x.astype(np.int32)])
    n = len(x)
    cols = np.arange(n)[:, None] + np.arange(self.width)[None, :]
    return {**doc, "history": padded[cols]}


def matched_fgrams(batch: dict, max_n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The f-gram that ends at every matched position of a batch, as tokens: (matched bool [B, L],
  tokens int32 [N, K] left-aligned and -1 padded for the N matched positions in order, their
  lengths int32 [N])."""
  n = batch["match_len"]
  matched = (n >= 2) & (batch["segment_ids"] > 0)
  windows = np.concatenate([batch["history"], batch["inputs"][..., None]], axis=-1)[matched]   # [N, K]
  lengths = n[matched].astype(np.int32)
  cols = np.arange(max_n)[None, :] + (max_n - lengths)[:, None]
  tokens = np.where(cols < max_n, np.take_along_axis(windows, np.minimum(cols, max_n - 1), axis=1), -1)
  return matched, tokens.astype(np.int32), lengths


class FgramTokens:
  """Rows source for A_f at decode: the distinct f-grams' tokens [U, K] (-1 padded) and lengths [U]."""

  def __init__(self, vocab: fgram_vocab.FgramVocab):
    tokens, lengths = vocab.token_matrix()
    self.tokens = np.concatenate([tokens, np.full((1, tokens.shape[1]), -1, np.int32)])   # last row: padding
    self.lengths = np.concatenate([lengths, [0]]).astype(np.int32)

  def fetch(self, unique_ids: np.ndarray, n: int):
    rows = np.where(unique_ids >= 0, unique_ids, len(self.lengths) - 1)
    return Done({"unique_tokens": self.tokens[rows], "unique_lengths": self.lengths[rows]})


class PackedFgrams:
  """A_f's inputs for DistinctFgrams: the distinct f-grams packed into rows as prefix trees
  (fgram/packing.py). Needs only K: the tokens come from the batch itself."""

  def __init__(self, max_n: int, row_len: int = 0):
    self.max_n, self.row_len = max_n, row_len or packing.default_row_len(max_n)
    if self.row_len < max_n:
      raise UserError(f"FgramConfig.row_len={self.row_len} is shorter than K={max_n}: pass 0 (the default) or >= K")
    self.per_row = packing.outputs_per_row(self.row_len, max_n)
    self._last = None   # (tokens, their plan): need, slots and packed of one batch sort once

  def _plan(self, tokens: np.ndarray, lengths: np.ndarray) -> packing.Plan:
    if self._last is None or self._last[0] is not tokens:
      self._last = (tokens, packing.plan(tokens, lengths, self.row_len, self.per_row))
    return self._last[1]

  def need(self, tokens: np.ndarray, lengths: np.ndarray) -> int:
    """Packed rows the distinct f-grams take."""
    return self._plan(tokens, lengths).rows

  def planned(self, max_distinct: int) -> int:
    """Rows that any max_distinct f-grams fit in (no shared prefixes, all of length K)."""
    return -(-max_distinct // min(self.per_row, self.row_len // self.max_n))

  def slots(self, tokens: np.ndarray, lengths: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """A_f's work: (needed, executed) token slots, (needed, executed) f-gram outputs. Needed
    slots are the nodes of the f-grams' prefix tree: what A_f must compute for them."""
    return self._plan(tokens, lengths).nodes, size * self.row_len, len(lengths), size * self.per_row

  def packed(self, tokens: np.ndarray, lengths: np.ndarray, size: int, process_index: int):
    """The f-grams packed into `size` rows: (Pending arrays, global list index of each)."""
    arrays, index = packing.pack(tokens, lengths, size, self.row_len, self.per_row, self._plan(tokens, lengths))
    offset = process_index * size * self.per_row
    return Done({f"unique_packed_{k}": v for k, v in arrays.items()}), index + offset


class StoreRows:
  """Rows source from an exported table (serve/store.py: anything with `fetch(ids) -> Pending`
  of float rows [n, d]): `unique_rows` [U, d], zero rows after the n distinct ones."""

  def __init__(self, store):
    self.store, self._matcher = store, None

  def fetch(self, unique_ids: np.ndarray, n: int):
    size = len(unique_ids)

    def pad(rows):
      out = np.zeros((size,) + rows.shape[1:], rows.dtype)
      out[:len(rows)] = rows
      return {"unique_rows": out}

    return Mapped(self.store.fetch(unique_ids[:n]), pad)

  # -- the list of distinct f-grams' rows, `size` long (DistinctFgrams) --
  def need(self, tokens: np.ndarray, lengths: np.ndarray) -> int:
    return len(lengths)

  def planned(self, max_distinct: int) -> int:
    return max_distinct

  def slots(self, tokens: np.ndarray, lengths: np.ndarray, size: int) -> tuple[int, int, int, int]:
    return 0, 0, 0, 0   # no A_f runs

  def packed(self, tokens: np.ndarray, lengths: np.ndarray, size: int, process_index: int):
    """The stored rows of these f-grams (their ids from the store's own keys)."""
    if self._matcher is None:
      self._matcher = matcher_from_tokens(self.store.fgram_tokens)
    k = tokens.shape[1]
    cols = np.arange(k)[None, :] - (k - lengths)[:, None]   # right-aligned: the f-gram ends in the last column
    right = np.where(cols >= 0, np.take_along_axis(tokens, np.maximum(cols, 0), axis=1), -1)
    ids, got = self._matcher.match_last(right) if len(right) else (np.zeros(0, np.int32), np.zeros(0, np.int32))
    if (got != lengths).any():
      raise UserError(f"store {self.store.url!r} lacks f-grams this batch matched: it was exported with "
                      "another f-gram file than the run's")
    padded = np.full(size, -1, np.int64)
    padded[:len(ids)] = ids
    return self.fetch(padded, len(ids)), np.arange(len(ids), dtype=np.int32) + process_index * size


class DistinctFgrams:
  """Batch feature: the batch's distinct f-grams (exact dedup), `fgram_index` [B, L] into their
  list, and the list itself from a source: FgramTokens (packed A_f inputs) or StoreRows (rows
  of an exported table). The list's static size is a bucket (fgram/packing.py) chosen from a
  sample of the data's needs, agreed by every process at every batch (parallel.Agreement);
  without a sample (ahead-of-time compile) one bucket that never overflows. A need above every
  bucket adds a larger one. `stat_train_only_work` (A_f's needed and executed work, FgramTokens.slots)
  rides along for the train loop (Method.train_only_flops_of)."""

  def __init__(self, source, *, process_index: int = 0, granularity: int = 1, planned: int = 1,
               max_buckets: int = 4, sample=None, name: str = "fgrams"):
    self.source, self.process_index, self.granularity = source, process_index, granularity
    self.max_buckets, self.sample = max_buckets, sample
    self.buckets = None if sample is not None else packing.Buckets([source.planned(planned)], granularity)
    self.agreement = parallel.Agreement(name)

  def distinct(self, batch: dict):
    """(matched [B, L], distinct f-grams' tokens [U, K] and lengths [U], each matched position's
    index among them): an exact dedup of the matched positions' token tuples."""
    matched, tokens, lengths = matched_fgrams(batch, batch["history"].shape[-1] + 1)
    if len(tokens) == 0:
      return matched, tokens, lengths, np.zeros(0, np.int64)
    unique, inverse = np.unique(tokens, axis=0, return_inverse=True)
    return matched, unique, (unique >= 0).sum(axis=1).astype(np.int32), inverse.reshape(-1)

  def choose_buckets(self) -> list[int]:
    """Buckets from the sample's needs (each the maximum over processes)."""
    needs = [self.source.need(*self.distinct(b)[1:3]) for b in self.sample()]
    needs = self.agreement.max(needs)
    self.buckets = packing.Buckets(packing.choose_buckets(needs, self.max_buckets, self.granularity),
                                   self.granularity)
    return self.buckets.sizes

  def __call__(self, batch: dict) -> dict:
    if self.buckets is None:
      self.choose_buckets()
    matched, tokens, lengths, inverse = self.distinct(batch)
    need = self.agreement.max([self.source.need(tokens, lengths)])[0]
    size = self.buckets.fit(need)
    rows, list_index = self.source.packed(tokens, lengths, size, self.process_index)
    index = np.full(matched.shape, -1, np.int32)
    index[matched] = list_index[inverse]
    return {**batch, "fgram_index": index, **rows.result(),
            "stat_train_only_work": np.array(self.source.slots(tokens, lengths, size), np.int64),
            "stat_fgram_matches": np.array(int(matched.sum()), np.int64)}


class FgramDecodeFeatures:
  """Decode features (methods/base.py): each new token's match and its row, every distinct
  f-gram of a step fetched once, by one read that is in flight until the step needs it."""

  def __init__(self, matcher: ExactMatcher, source):
    self.matcher, self.source = matcher, source
    self.history_len = matcher.max_n   # a match ends at the newest token and spans <= K tokens

  def _features(self, fgram_id: np.ndarray, max_unique: int):
    unique_ids, index, n = dedup_batch(fgram_id, max_unique)   # max_unique = positions: never overflows
    return Mapped(self.source.fetch(unique_ids, n), lambda rows: {"fgram_index": index, **rows})

  def prompt(self, inputs_BxL: np.ndarray, valid_BxL: np.ndarray):
    """Features of right-padded prompts ([BOS, x_1, ...]; valid marks real positions)."""
    fgram_id, _ = self.matcher.match(inputs_BxL, valid_BxL.astype(np.int32))
    return self._features(fgram_id, inputs_BxL.size)

  def step(self, history_BxH: np.ndarray):
    """Features of each row's newest token; history holds the last tokens, newest last, -1 before
    the document start."""
    fgram_id, _ = self.matcher.match_last(history_BxH)
    return self._features(fgram_id[:, None], len(history_BxH))


def matcher_from_tokens(fgram_tokens: np.ndarray) -> ExactMatcher:
  """The exact matcher over f-grams given as rows of ids right-padded with -1 ([S, K])."""
  valid = fgram_tokens >= 0
  offsets = np.zeros(len(fgram_tokens) + 1, np.int64)
  np.cumsum(valid.sum(axis=1), out=offsets[1:])
  return ExactMatcher.from_arrays(fgram_tokens[valid], offsets, fgram_tokens.shape[1])


# -- the method --------------------------------------------------------------------------------
@dataclasses.dataclass
class Scone(Method):
  fgram: FgramConfig = None
  vocab: fgram_vocab.FgramVocab | None = None   # truncated to FgramConfig.size; None until first use with TAGS
  fg_meta: fgram_vocab.FgramMeta | None = None   # FG's meta.json (K, S, identities): always there

  name = "scone"
  description = "a SCONE run"
  training_only = ("fgram_model",)

  def __post_init__(self):
    if self.fg_meta is None and self.vocab is not None:
      self.fg_meta = self.vocab.meta

  @classmethod
  def resolve(cls, model, data, meta, *, planned=False):
    fcfg = C.build(FgramConfig)
    if planned:
      return cls(model, data, fcfg, _planned_vocab(fcfg, model))
    fg_meta = _check_meta(fcfg, data, meta)
    if not fcfg.tags_dir:
      return cls(model, data, fcfg, _load_vocab(fcfg, fg_meta))
    # With TAGS the data pipeline needs no vocabulary or matcher: it is read only if something
    # else asks for it (export, decoding, eval on other data).
    method = cls(model, data, fcfg, None, fg_meta)
    tags.check(fcfg.tags_dir, data.data_dir, method.fgrams_sha256(), method.max_n, method.num_fgrams)
    return method

  @property
  def fgram_vocab(self) -> fgram_vocab.FgramVocab:
    """V_f (truncated to FgramConfig.size), read on first use."""
    if self.vocab is None:
      self.vocab = _load_vocab(self.fgram, self.fg_meta)
    return self.vocab

  @property
  def max_n(self) -> int:
    """K: the longest f-gram."""
    return self.fg_meta.max_n

  @property
  def num_fgrams(self) -> int:
    """|V_f| of the run (FgramConfig.size, or every f-gram of the file)."""
    return self.fgram.size or self.fg_meta.num_fgrams

  def max_unique(self, process_rows: int, batch_devices: int) -> int:
    """Planned distinct f-grams per process batch (FgramConfig.max_unique, else a bound that
    never overflows), a multiple of the batch devices: what `compile` sizes a run with."""
    bound = self.fgram.max_unique or min(process_rows * self.data.seq_len, self.num_fgrams)
    return -(-bound // batch_devices) * batch_devices

  def input_embedding(self):
    return lambda rngs: SconeEmbedding(self.model, self.fgram, self.max_n, rngs)

  def document_features(self, tagged: bool = True):
    if self.fgram.tags_dir and tagged:   # the match lengths come from TAGS (sidecar): no matcher here
      return (History(self.max_n),)
    return (MatchDocument(ExactMatcher.checked(self.fgram_vocab, self.fgram.fgram_dir)), History(self.max_n))

  def sidecar(self):
    return ("match_len", self.fgram.tags_dir) if self.fgram.tags_dir else None

  def batch_features(self, process_index=0, batch_devices=1, process_rows=0, store=None, sample=None):
    rows = process_rows or self.data.batch_size
    source = PackedFgrams(self.max_n, self.fgram.row_len) if store is None else StoreRows(store)
    take = None if sample is None else (lambda: sample(self.fgram.sample_batches))
    return (DistinctFgrams(source, process_index=process_index, granularity=batch_devices,
                           planned=self.max_unique(rows, batch_devices), max_buckets=self.fgram.buckets,
                           sample=take, name="store" if store is not None else "af"),)

  def decode_features(self, store=None):
    if store is None:   # A_f on the device, from the distinct f-grams' tokens
      return FgramDecodeFeatures(ExactMatcher.checked(self.fgram_vocab, self.fgram.fgram_dir),
                                 FgramTokens(self.fgram_vocab))
    return FgramDecodeFeatures(matcher_from_tokens(store.fgram_tokens), StoreRows(store))

  def fgrams_sha256(self) -> str:
    """The identity of the f-gram file (recorded by a run, a store's manifest and TAGS)."""
    return fgram_vocab.fgrams_sha256(self.fgram.fgram_dir, self.fg_meta)

  def identity(self):
    return {"fgrams_sha256": self.fgrams_sha256()}

  def identity_sources(self):
    return {"fgrams_sha256": self.fgram.fgram_dir}

  def input_dirs(self):
    return {"FGRAM_DIR": self.fgram.fgram_dir, **({"TAGS_DIR": self.fgram.tags_dir} if self.fgram.tags_dir else {})}

  def offloaded_entries(self, counted):
    return counted + self.num_fgrams * self.model.d_model

  def describe(self):
    fcfg = self.fgram.model_config(self.model)
    return {"name": self.name, "max_n": self.max_n, "num_fgrams": self.num_fgrams, "fgram_layers": fcfg.num_layers,
            "fgram_d_model": fcfg.d_model, "fgram_d_ff": fcfg.d_ff, "fgram_heads": fcfg.num_heads}

  def _af_flops(self) -> tuple[float, float]:
    """A_f's forward FLOPs (per token slot: its blocks at context K and the d -> d_f projection;
    per f-gram: the d_f -> d projection at its last token)."""
    fcfg = self.fgram.model_config(self.model)
    d, df = self.model.d_model, fcfg.d_model
    proj = 2 * d * df if df != d else 0
    return decoder_forward_flops(fcfg, self.max_n) + proj, proj

  def train_only_flops(self, process_count, batch_devices):
    """Planned: 3x A_f's forward FLOPs on the never-overflowing number of distinct f-grams, all
    of length K, spread over the batch's tokens (an upper bound; the train loop reports the
    executed and the needed A_f FLOPs of every batch through train_only_flops_of)."""
    rows = self.data.batch_size
    distinct = self.max_unique(rows // process_count, batch_devices) * process_count
    per_slot, per_fgram = self._af_flops()
    return 3.0 * (per_slot * self.max_n + per_fgram) * distinct / (rows * self.data.seq_len)

  def train_only_flops_of(self, work, tokens):
    """(needed, executed) A_f training FLOPs per token from DistinctFgrams' `stat_train_only_work`
    ([needed slots, executed slots, needed f-grams, executed list entries], summed)."""
    per_slot, per_fgram = self._af_flops()
    needed_slots, executed_slots, needed_fgrams, executed_entries = work
    return (3.0 * (needed_slots * per_slot + needed_fgrams * per_fgram) / tokens,
            3.0 * (executed_slots * per_slot + executed_entries * per_fgram) / tokens)


def _check_meta(fcfg: FgramConfig, data: C.DataConfig, meta: shards.DataMeta) -> fgram_vocab.FgramMeta:
  """FG's meta.json, checked against the run's data and config (the vocabulary is not read)."""
  if not fcfg.fgram_dir:
    raise UserError("a SCONE run needs FGRAM_DIR (e.g. --gin.FGRAM_DIR=\"'/path/to/fgrams'\")")
  fg = fgram_vocab.load_meta(fcfg.fgram_dir)
  if fg.data_fingerprint != shards.data_fingerprint(data.data_dir):
    raise UserError(f"f-grams in {fcfg.fgram_dir!r} were built from other data than {data.data_dir!r}: "
                    "rebuild them with `scone-jax fgrams build`")
  if fg.vocab_size != meta.vocab_size:
    raise UserError(f"f-gram vocabulary size {fg.vocab_size} != data vocabulary {meta.vocab_size}")
  if fcfg.max_n and fcfg.max_n != fg.max_n:
    raise UserError(f"FgramConfig.max_n={fcfg.max_n} but {fcfg.fgram_dir!r} holds f-grams of up to {fg.max_n} tokens")
  if fcfg.size and fcfg.size > fg.num_fgrams:
    raise UserError(f"FgramConfig.size={fcfg.size} but {fcfg.fgram_dir!r} holds only {fg.num_fgrams} f-grams")
  return fg


def _load_vocab(fcfg: FgramConfig, fg: fgram_vocab.FgramMeta) -> fgram_vocab.FgramVocab:
  vocab = fgram_vocab.load(fcfg.fgram_dir)
  if vocab.meta != fg:
    raise UserError(f"{fcfg.fgram_dir!r} changed while this run used it: rerun")
  if fcfg.size:
    vocab = fgram_vocab.FgramVocab(vocab.flat[:vocab.offsets[fcfg.size]], vocab.offsets[:fcfg.size + 1],
                                   vocab.counts[:fcfg.size], vocab.meta)
  return vocab


def _planned_vocab(fcfg: FgramConfig, model: ModelConfig) -> fgram_vocab.FgramVocab:
  """For ahead-of-time compilation without an f-gram file: shapes depend only on K and the number
  of distinct f-grams per batch, so a stand-in vocabulary of K-1 f-grams carries K, and
  FgramConfig.size the planned |V_f| (accounting, max_unique bound)."""
  if fcfg.max_n < 2 or fcfg.size < 1:
    raise UserError("sizing a SCONE run without its f-grams (compile, describe) needs FgramConfig.max_n (K >= 2) "
                    "and FgramConfig.size (|V_f|), or FGRAM_DIR on this host")
  grams = [(4,) * n for n in range(2, fcfg.max_n + 1)]   # closed under prefixes and suffixes
  meta = fgram_vocab.FgramMeta(fcfg.max_n, fcfg.size, 1, 0, "", len(grams), model.vocab_size)
  return fgram_vocab.FgramVocab.from_tuples(grams, [1] * len(grams), meta)
