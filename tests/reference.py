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


# ---- the decoder and SCONE's A_f in plain numpy (docs/METHODS.md notation and 1.3) ---------------------
# Float64, from a parameter pure dict (`nnx.to_pure_dict`, or LoadedRun.params) read by name only:
# no scone_jax model code runs. Head counts and widths come from the parameters' shapes; a stack
# of layers is either stacked (a leading layer axis, scan_layers) or a dict {0: ..., 1: ...}.
# `cfg` is anything with norm_eps, rope_theta, positions and tie_embeddings (a ModelConfig); A_f
# shares the main model's eps, theta and positions (METHODS.md 1.3: "blocks of the main model's
# design"). The block's form is read from the parameters present: a norm with a `bias` is a
# LayerNorm, an MLP without `w_gate` is GELU (tanh form), biases where `bq`, `b_up`, ... exist;
# RoPE only for cfg.positions == "rope"; a `pos_embed` table is added to the input embeddings.


def np_params(params) -> dict:
  """A parameter tree as nested dicts of float64 numpy arrays (leaves: jax or numpy arrays)."""
  if isinstance(params, dict) or hasattr(params, "items"):
    return {k: np_params(v) for k, v in params.items()}
  return np.asarray(params, np.float64)


def np_layers(stack: dict) -> list[dict]:
  """The per-layer parameter dicts of a block stack (stacked or a dict keyed by layer)."""
  if all(isinstance(k, int) for k in stack):
    return [stack[k] for k in sorted(stack)]

  def at(tree, i):
    return {k: at(v, i) for k, v in tree.items()} if isinstance(tree, dict) else tree[i]

  return [at(stack, i) for i in range(stack["attn_norm"]["scale"].shape[0])]


def np_rms_norm(x, scale, eps: float):
  """x / sqrt(mean(x²) + eps) · scale over the last axis."""
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def np_layer_norm(x, scale, bias, eps: float):
  """(x - mean(x)) / sqrt(var(x) + eps) · scale + bias over the last axis."""
  centred = x - np.mean(x, axis=-1, keepdims=True)
  return centred / np.sqrt(np.mean(centred * centred, axis=-1, keepdims=True) + eps) * scale + bias


def np_norm(x, p: dict, eps: float):
  """The norm whose parameters p are: LayerNorm (scale, bias) or RMSNorm (scale)."""
  return np_layer_norm(x, p["scale"], p["bias"], eps) if "bias" in p else np_rms_norm(x, p["scale"], eps)


def np_gelu(x):
  """GELU, tanh approximation (GPT-2): x/2 · (1 + tanh(sqrt(2/π) · (x + 0.044715 x³)))."""
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def np_rope(x_LxNxH, positions_L, theta: float):
  """Rotate-half RoPE: frequencies θ^(-2i/H), i < H/2; (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
  h = x_LxNxH.shape[-1]
  freq = theta ** (-2.0 * np.arange(h // 2) / h)
  angle = np.asarray(positions_L, np.float64)[:, None, None] * freq   # [L, 1, H/2]
  x1, x2 = x_LxNxH[..., :h // 2], x_LxNxH[..., h // 2:]
  return np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], axis=-1)


def np_attention(x_LxD, p: dict, positions_L, segment_ids_L, theta: float | None):
  """Grouped-query attention, one sequence: query head n reads key/value head n // (N / K); a
  query sees the keys of its own segment at positions <= its own; softmax(q·k / sqrt(H)).
  theta None: no RoPE (learned absolute positions)."""
  def proj(name, eq):
    y = np.einsum(eq, x_LxD, p[name])
    return y + p["b" + name[1]] if "b" + name[1] in p else y

  q, k, v = proj("wq", "ld,dnh->lnh"), proj("wk", "ld,dkh->lkh"), proj("wv", "ld,dkh->lkh")
  if theta is not None:
    q, k = np_rope(q, positions_L, theta), np_rope(k, positions_L, theta)
  n, kv, h = q.shape[1], k.shape[1], q.shape[2]
  seg, pos = np.asarray(segment_ids_L), np.asarray(positions_L)
  allowed = (seg[:, None] == seg[None, :]) & (pos[:, None] >= pos[None, :])   # [Lq, Lk]
  out = np.zeros_like(q)
  for head in range(n):
    g = head // (n // kv)
    scores = np.where(allowed, q[:, head] @ k[:, g].T / math.sqrt(h), -np.inf)
    w = np.exp(scores - scores.max(axis=1, keepdims=True))
    out[:, head] = (w / w.sum(axis=1, keepdims=True)) @ v[:, g]
  out = np.einsum("lnh,nhd->ld", out, p["wo"])
  return out + p["bo"] if "bo" in p else out


def np_mlp(x_LxD, p: dict):
  """W_down(SiLU(W_gate x) * W_up x) (SwiGLU) or W_down(GELU(W_up x)), each matrix plus its bias if any."""
  def lin(name, x):
    return x @ p["w_" + name] + p.get("b_" + name, 0.0)

  up = lin("up", x_LxD)
  if "w_gate" in p:
    gate = lin("gate", x_LxD)
    return lin("down", (gate / (1 + np.exp(-gate))) * up)
  return lin("down", np_gelu(up))


def np_blocks(x_LxD, stack: dict, positions_L, segment_ids_L, cfg):
  """Pre-norm blocks: x + Attn(norm(x)), then x + MLP(norm(x)), layer by layer."""
  theta = cfg.rope_theta if getattr(cfg, "positions", "rope") == "rope" else None
  for p in np_layers(stack):
    x_LxD = x_LxD + np_attention(np_norm(x_LxD, p["attn_norm"], cfg.norm_eps), p["attn"],
                                 positions_L, segment_ids_L, theta)
    x_LxD = x_LxD + np_mlp(np_norm(x_LxD, p["mlp_norm"], cfg.norm_eps), p["mlp"])
  return x_LxD


def np_fgram_embedding(params: dict, cfg, gram) -> np.ndarray:
  """A_f(T[x_j], ..., T[x_i]) [d] of one f-gram (METHODS.md 1.3): its token rows right-padded to
  K with T[0], the input projection if any, plus A_f's position table, A_f's causal blocks over
  positions 0..K-1, the output at the f-gram's last position, the final norm, the output
  projection if any."""
  af = params["input_embedding"]["fgram_model"]
  k = af["positions"].shape[0]
  ids = list(gram) + [0] * (k - len(gram))
  x = params["token_embed"][ids]
  if "in_proj" in af:
    x = x @ af["in_proj"]
  x = x + af["positions"]
  h = np_blocks(x, af["blocks"]["blocks"], np.arange(k), np.ones(k, np.int64), cfg)[len(gram) - 1]
  h = np_norm(h, af["final_norm"], cfg.norm_eps)
  return h @ af["out_proj"] if "out_proj" in af else h


def np_scone_embeddings(params: dict, cfg, fgrams: list[tuple[int, ...]], tokens_L, segment_ids_L=None):
  """SCONE's input embeddings of one row [L, d] and its brute-force matches [L] (-1 = none):
  A_f(f-gram) where the longest in-segment window ending at i is an f-gram (it replaces T[x_i]),
  T[x_i] elsewhere. fgrams: V_f in id order, or None (the baseline: T[x_i] everywhere)."""
  tokens = np.asarray(tokens_L)
  out = params["token_embed"][tokens].copy()
  if fgrams is None:
    return out, np.full(len(tokens), -1, np.int32)
  seg = np.ones_like(tokens) if segment_ids_L is None else np.asarray(segment_ids_L)
  k = params["input_embedding"]["fgram_model"]["positions"].shape[0]
  ids = brute_force_match(fgrams, k, tokens[None], seg[None])[0][0]
  for i, r in enumerate(ids):
    if r >= 0:
      out[i] = np_fgram_embedding(params, cfg, fgrams[r])
  return out, ids


def np_logits(params: dict, cfg, embeddings_LxD, positions_L=None, segment_ids_L=None) -> np.ndarray:
  """The main model from its input embeddings (T[x] or the method's): plus the learned position
  rows P[position] if the model has them, blocks, final norm, logits [L, V]: tied
  h·Tᵀ·d^(-1/2), or h·W_unembed."""
  n = len(embeddings_LxD)
  positions = np.arange(n) if positions_L is None else np.asarray(positions_L)
  seg = np.ones(n, np.int64) if segment_ids_L is None else np.asarray(segment_ids_L)
  if "pos_embed" in params:
    embeddings_LxD = embeddings_LxD + params["pos_embed"][positions]
  h = np_blocks(embeddings_LxD, params["decoder"]["blocks"], positions, seg, cfg)
  h = np_norm(h, params["final_norm"], cfg.norm_eps)
  if cfg.tie_embeddings:
    assert "unembed" not in params
    return h @ params["token_embed"].T * params["token_embed"].shape[1] ** -0.5
  return h @ params["unembed"]


def np_forward(params: dict, cfg, tokens_L, fgrams=None, positions_L=None, segment_ids_L=None):
  """Logits [L, V] of one row (SCONE when fgrams is V_f, else the baseline) and its matches [L]."""
  emb, ids = np_scone_embeddings(params, cfg, fgrams, tokens_L, segment_ids_L)
  return np_logits(params, cfg, emb, positions_L, segment_ids_L), ids
