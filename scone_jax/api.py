"""The Python API: a trained run as an object.

    import scone_jax
    model = scone_jax.load("RUN", store="STORE")     # store: SCONE's exported table; None = A_f
    model.generate(["def main():"], max_new_tokens=32)  # -> ["completion text"]
    model.score(["import os"])                       # -> float64 [N]: log-likelihood in nats
    model.embed_fgrams([(17, 4), (17, 4, 9)])         # -> float32 [U, d]: A_f's rows (SCONE)

Each call is what the CLI does for it (`generate`, `eval --task`, `export`): the run's checkpoint,
its tokenizer, its method's features, the same one-line errors (UserError). `devices=N` splits a
batch of sequences over N devices of this host (data parallel: the parameters replicated on each,
the KV cache and activations sharded over the mesh's data axis); rows are padded to a multiple of N.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

from scone_jax.data.tokenizer import open_data_tokenizer
from scone_jax.errors import UserError
from scone_jax.export.writer import AfRows
from scone_jax.serve.decode import Decoder
from scone_jax.serve.generate import load_decoder
from scone_jax.serve.sampling import Sampling
from scone_jax.train.tasks import Scorer


@dataclasses.dataclass
class Model:
  """A loaded run (see `load`). `run` is its LoadedRun (experiment, trainer, params, step)."""
  run: object
  decoder: Decoder
  tokenizer: object
  store: object = None   # the opened store (serve/store.py), or None: A_f computes the rows
  _decoders: dict = dataclasses.field(default_factory=dict)
  _scorer: Scorer | None = None
  _rows: AfRows | None = None

  # -- generation ----------------------------------------------------------------------------
  def generate(self, prompts: str | Sequence[str] | Sequence[Sequence[int]], *, max_new_tokens: int = 64,
               temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0):
    """Completes each prompt (after a BOS, until EOS or max_new_tokens), all as one batch. Text
    prompts give completion texts (one text for one str); token-id prompts give id lists."""
    single = isinstance(prompts, str)
    items = [prompts] if single else list(prompts)
    if not items:
      return []
    as_text = isinstance(items[0], str)
    ids = [self._encode(p) for p in items] if as_text else [self._ids(p) for p in items]
    if max_new_tokens < 1:
      raise UserError(f"max_new_tokens={max_new_tokens}: give at least 1")
    need = max(len(p) for p in ids) + 1 + max_new_tokens
    if need > self.run.exp.model.max_seq_len:
      raise UserError(f"prompt plus max_new_tokens is {need} tokens, more than the model supports "
                      f"(ModelConfig.max_seq_len={self.run.exp.model.max_seq_len})")
    meta = self.run.exp.data_meta
    n = len(ids)   # data parallel over the sequences: rows padded to a multiple of the devices
    padded = ids + [ids[0]] * (-n % self.devices)
    with jax.set_mesh(self.run.trainer.mesh):   # the KV cache and activations shard over "data"
      out = self._decoder(Sampling(temperature, top_k, top_p).validate(), seed).generate(
          padded, max_new_tokens=max_new_tokens, bos_id=meta.bos_id, eos_id=meta.eos_id)[:n]
    if not as_text:
      return out
    texts = [self.tokenizer.decode(t) for t in out]
    return texts[0] if single else texts

  def _decoder(self, sampling: Sampling, seed: int) -> Decoder:
    key = (sampling, seed)
    if key not in self._decoders:   # each Decoder compiles its own steps: kept per sampling rule
      d = self.decoder
      self._decoders[key] = Decoder(d.model_fn, d.params, d.cfg, d.features, sampling, seed=seed)
    return self._decoders[key]

  # -- scoring -------------------------------------------------------------------------------
  def score(self, texts: str | Sequence[str] | Sequence[Sequence[int]]) -> np.ndarray:
    """float64 [N]: log p(text | BOS) in nats, summed over the text's tokens (its EOS not
    included), each text run as one document, as `eval --task` scores a choice."""
    items = [texts] if isinstance(texts, str) else list(texts)
    ids = [self._encode(t) if isinstance(t, str) else self._ids(t) for t in items]
    for i, d in enumerate(ids):
      if not d:
        raise UserError(f"text {i} has no tokens: nothing to score")
      if len(d) + 1 > self.run.exp.model.max_seq_len:
        raise UserError(f"text {i} is {len(d)} tokens, more than the model supports after its BOS "
                        f"(ModelConfig.max_seq_len={self.run.exp.model.max_seq_len})")
    if self._scorer is None:
      self._scorer = Scorer(self.run.exp, self.run.trainer, self.run.params, store=self.store)
    return self._scorer.score_sequences(ids, [len(d) for d in ids])

  # -- f-gram rows ---------------------------------------------------------------------------
  def embed_fgrams(self, fgrams: Sequence[Sequence[int]]) -> np.ndarray:
    """float32 [U, d]: A_f's embedding of each f-gram (token ids, 2..K of them), computed from the
    checkpoint: the rows `scone-jax export` writes for the f-grams of V_f (SCONE runs only)."""
    method = self.run.exp.method
    if getattr(method, "max_n", None) is None or "fgram_model" not in method.training_only:
      raise UserError(f"run {self.run.workdir!r} is {method.description}: it has no f-gram model")
    k = method.max_n
    tokens = np.full((len(fgrams), k), -1, np.int32)
    lengths = np.zeros(len(fgrams), np.int32)
    for i, gram in enumerate(fgrams):
      gram = self._ids(gram)
      if not 2 <= len(gram) <= k:
        raise UserError(f"f-gram {i} has {len(gram)} tokens: an f-gram has 2 to K={k}")
      tokens[i, :len(gram)], lengths[i] = gram, len(gram)
    if not len(fgrams):
      return np.zeros((0, self.run.exp.model.d_model), np.float32)
    if self._rows is None:
      self._rows = AfRows(self.run.trainer, self.run.params, "float32")
    n, pad = len(tokens), -len(tokens) % self.devices   # whole rows per device
    rows, _ = self._rows(np.concatenate([tokens, tokens[:1].repeat(pad, 0)]),
                         np.concatenate([lengths, lengths[:1].repeat(pad)]))
    return np.asarray(rows[:n], np.float32)

  @property
  def devices(self) -> int:
    """The devices the run is loaded on (the mesh's data axis: sequences split over them)."""
    return self.run.trainer.mesh.shape["data"]

  # -- tokens --------------------------------------------------------------------------------
  def _encode(self, text: str) -> list[int]:
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:
      raise UserError(f"text {text[:40]!r} is not valid UTF-8 (at character {e.start})") from None
    return list(self.tokenizer.encode(text))

  def _ids(self, ids) -> list[int]:
    out = [int(t) for t in ids]
    vocab = self.run.exp.model.vocab_size
    if any(t < 0 or t >= vocab for t in out):
      raise UserError(f"token ids must lie in 0..{vocab - 1} (the run's vocabulary)")
    return out


def load(workdir: str, *, store: str | None = None, tier: str = "ram", devices: int | Sequence = 1,
         step: int | None = None, data_dir: str | None = None, cache_mb: int = 64,
         allow_other_data: bool = False) -> Model:
  """A trained run (RUN, local or a bucket URL). store: SCONE's exported table (a path or kvstore
  URL) read from `tier` (ram, disk, remote); None computes f-gram embeddings with A_f from the
  checkpoint. devices: how many of this host's devices (or which): the parameters are replicated
  on each and a batch of sequences is split over them (data parallel). step: a checkpoint step
  (default the newest); data_dir: the tokenizer's DATA (default the run's)."""
  if tier not in ("ram", "disk", "remote"):
    raise UserError(f"tier={tier!r}: pick ram, disk or remote")
  local = jax.local_devices()
  if isinstance(devices, int):
    if not 1 <= devices <= len(local):
      raise UserError(f"devices={devices}: this host has {len(local)} device(s)")
    devices = local[:devices]
  decoder, run = load_decoder(workdir, store=store, tier=tier, step=step, data_dir=data_dir,
                              cache_bytes=cache_mb << 20, allow_other_data=allow_other_data, devices=devices)
  return Model(run, decoder, open_data_tokenizer(run.exp.data.data_dir), decoder.store)
