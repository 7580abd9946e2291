"""Plain, obviously-correct references the tests compare the real code against.

Each one follows the definition (docs/METHODS.md) as literally as possible: loops over positions and
lengths, Python ints, dicts and Counters, sorting in Python. They are slow on purpose and never
call the code under test. Test modules import them from here (no test module imports another).
"""
from __future__ import annotations

import collections
import math

import numpy as np

# ---- f-grams: counting (docs/METHODS.md 1.1) ----------------------------------------------------------


def brute_force_fgrams(docs, special_ids, max_n: int, size: int, min_count: int) -> list[tuple[tuple[int, ...], int]]:
  """The definition of V_f with counts: every n-gram (2..K) inside a document without special
  ids, count >= c_min, ranked by (count desc, n asc, tokens asc), first S. Returns [(gram, count)]."""
  counts = collections.Counter()
  for doc in docs:
    doc = [int(t) for t in doc]
    for n in range(2, max_n + 1):
      for i in range(len(doc) - n + 1):
        gram = tuple(doc[i:i + n])
        if not any(t in special_ids for t in gram):
          counts[gram] += 1
  kept = [(g, c) for g, c in counts.items() if c >= min_count]
  kept.sort(key=lambda gc: (-gc[1], len(gc[0]), gc[0]))
  return kept[:size]


def top_fgrams(corpus: list[int], max_n: int, size: int) -> list[tuple[int, ...]]:
  """V_f by the definition over one token list (no special ids, no c_min): every n-gram (2..K) of
  the corpus, ranked (count desc, n asc, ids asc), first S."""
  counts = collections.Counter(tuple(corpus[i:i + n]) for n in range(2, max_n + 1)
                               for i in range(len(corpus) - n + 1))
  return sorted(counts, key=lambda g: (-counts[g], len(g), g))[:size]


# ---- f-grams: matching (docs/METHODS.md 1.2) ----------------------------------------------------------


def brute_force_match(fgrams: list[tuple[int, ...]], max_n: int, tokens, segment_ids=None):
  """Per position, the longest in-segment window x_{j..i} (2 <= length <= K) that is an f-gram,
  trying every length (no use of closure). tokens [B, L]; padding is segment id 0.
  Returns (fgram_id [B, L] int32, -1 = none; match_len [B, L] int32, 1 = none)."""
  ids = {g: r for r, g in enumerate(fgrams)}
  tokens = np.asarray(tokens)
  segment_ids = np.ones_like(tokens) if segment_ids is None else np.asarray(segment_ids)
  fgram_id = np.full(tokens.shape, -1, np.int32)
  match_len = np.ones(tokens.shape, np.int32)
  for b in range(tokens.shape[0]):
    for i in range(tokens.shape[1]):
      for n in range(2, max_n + 1):
        j = i - n + 1
        if j < 0 or segment_ids[b, i] == 0 or any(segment_ids[b, k] != segment_ids[b, i] for k in range(j, i)):
          break
        r = ids.get(tuple(int(t) for t in tokens[b, j:i + 1]))
        if r is not None:
          fgram_id[b, i], match_len[b, i] = r, n
  return fgram_id, match_len


def brute_force_suffix_match(tokens: list[int], table: dict) -> int:
  """Longest suffix of `tokens` (2..K tokens) in the f-gram table {gram: id}, by trying every
  length. Returns the f-gram id, -1 if no suffix is an f-gram."""
  best = -1
  for n in range(2, min(len(tokens), max(map(len, table))) + 1):
    best = table.get(tuple(tokens[-n:]), best)
  return best


# ---- LongCat hashed n-gram ids (docs/METHODS.md 2) ----------------------------------------------------


def brute_force_ngram_ids(layout, inputs, segment_ids) -> list[list[int]]:
  """[L][T] Python ints: the hash id of every position in every table, by the definition, with no
  modular shortcut until the end. `layout` is a scone_jax.methods.ngram_hash.NgramTableLayout (only
  its orders, sizes, vocab_size and special_ids are read)."""
  out = []
  for i in range(len(inputs)):
    row = []
    for n, m in zip(layout.orders, layout.sizes):
      value = 0
      for j in range(n):
        p = i - j
        same = p >= 0 and segment_ids[p] == segment_ids[i]
        z = int(inputs[p]) if same and int(inputs[p]) not in layout.special_ids else 0
        value += z * layout.vocab_size ** j
      row.append(value % m)
    out.append(row)
  return out


# ---- sampling ------------------------------------------------------------------------------------


def reference_filter(row, s) -> set[int]:
  """The tokens top-k / top-p keep, by sorting in plain Python. `s` has temperature, top_k
  (0 = off) and top_p (1 = off), as scone_jax.serve.sampling.Sampling."""
  x = [float(v) / s.temperature for v in row]
  order = sorted(range(len(x)), key=lambda i: -x[i])
  kept = order[:s.top_k] if s.top_k else order
  if s.top_p < 1:
    z = [math.exp(x[i] - x[kept[0]]) for i in kept]
    probs = [v / sum(z) for v in z]
    out, mass = [], 0.0
    for i, p in zip(kept, probs):
      out.append(i)
      mass += p
      if mass >= s.top_p:
        break
    kept = out
  return set(kept)


# ---- STEM (docs/METHODS.md 3) -------------------------------------------------------------------------


def stem_reference_logits(model, batch, vocab_size: int, stem_layers: tuple[int, ...]):
  """Logits of an unscanned STEM model, layer by layer from its modules, with every STEM layer's
  up-projection written as a dense product one_hot(x) @ U_l (no table lookup, no lax.cond)."""
  import jax
  import jax.numpy as jnp
  dec = model.decoder
  x = model.embed_tokens(batch["inputs"])
  onehot = jax.nn.one_hot(batch["inputs"], vocab_size, dtype=jnp.float32)
  stem_i = dense_i = 0
  for i, blk in enumerate(dec.blocks):
    x = x + blk.attn(blk.attn_norm(x), batch["positions"], batch["segment_ids"])[0]
    h = blk.mlp_norm(x)
    if i in stem_layers:
      up = jnp.einsum("blv,vf->blf", onehot, dec.ffn_up.stem_tables[...][stem_i], precision="highest")
      stem_i += 1
    else:
      up = jnp.einsum("bld,df->blf", h, dec.ffn_up.dense_up[...][dense_i], precision="highest")
      dense_i += 1
    gate = jax.nn.silu(jnp.einsum("bld,df->blf", h, blk.mlp.w_gate[...], precision="highest"))
    x = x + jnp.einsum("blf,fd->bld", gate * up, blk.mlp.w_down[...], precision="highest")
  return model.logits(x)
