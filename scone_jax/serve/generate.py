"""`scone-jax generate`: complete prompts with a trained run, its f-gram rows from a store.

  --store STORE   SCONE: rows of the exported table (scone-jax export), read from the --tier
                  ram (whole table in host memory), disk (tensorstore reads, bounded cache) or
                  remote (the same reader, any kvstore URL)
  --store none    f-gram embeddings computed with A_f from the checkpoint (the default); the
                  only choice for a run of another method (the method gives its decode features)
Prompts are tokenized with the run's DATA tokenizer (vocab.model or tokenizer.json); each is decoded after a BOS, several at
once as one batch, until EOS or --max_new_tokens. Output: the completion text, or with --format
json {"tokens": [completion ids], "text": completion} (a list of those for several prompts).
"""
from __future__ import annotations

import argparse
import json

import jax

from scone_jax.config import MeshConfig, flag_range
from scone_jax.data.tokenizer import open_data_tokenizer
from scone_jax.errors import UserError
from scone_jax.export.manifest import identity_of
from scone_jax.serve.decode import Decoder
from scone_jax.serve.sampling import Sampling
from scone_jax.serve.store import open_store
from scone_jax.train.restore import load_run


def add_arguments(p: argparse.ArgumentParser) -> None:
  p.add_argument("--workdir", required=True, help="a run directory written by `scone-jax train`")
  p.add_argument("--store", default="none", help="f-gram store (SCONE runs; a path or kvstore URL), or "
                 "'none' = compute f-gram embeddings with A_f")
  p.add_argument("--tier", default="ram", choices=("ram", "disk", "remote"), help="how the store is read")
  p.add_argument("--prompt", action="append", required=True, help="prompt text (repeat for a batch)")
  p.add_argument("--max_new_tokens", type=flag_range(1), default=64)
  p.add_argument("--temperature", type=flag_range(0.0, kind=float), default=0.0, help="0 = greedy")
  p.add_argument("--top_k", type=flag_range(0), default=0, help="0 = off")
  p.add_argument("--top_p", type=flag_range(0.0, 1.0, kind=float, bounds="open"), default=1.0, help="1 = off")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--step", type=flag_range(0), default=None, help="checkpoint step (default: newest)")
  p.add_argument("--data", default=None, help="data directory with its tokenizer (default: the run's DATA_DIR)")
  p.add_argument("--cache_mb", type=flag_range(1), default=64, help="disk/remote tiers: tensorstore cache size")
  p.add_argument("--allow_other_data", action="store_true",
                 help="use the run although its DATA_DIR or f-gram file changed since it trained (on purpose)")
  p.add_argument("--format", default="text", choices=("text", "json"))


def load_decoder(workdir: str, *, store: str | None = "none", tier: str = "ram", sampling: Sampling = Sampling(),
                 seed: int = 0, step: int | None = None, data_dir: str | None = None,
                 cache_bytes: int = 64 << 20, allow_other_data: bool = False, devices=None):
  """(Decoder, LoadedRun): the run's checkpoint with its method's decode features (SCONE: rows
  from `store`, or A_f when store is none), on one device or data parallel over `devices`
  (parameters replicated). The opened store, if any, is `decoder.store`."""
  devices = list(devices) if devices is not None else jax.devices()[:1]
  run = load_run(workdir, step=step, devices=devices, data_dir=data_dir,
                 mesh_config=MeshConfig(data=len(devices), fsdp=1, tensor=1), allow_other_data=allow_other_data)
  opened = None
  if store not in (None, "", "none"):
    if run.exp.method.fgram_vocab is None:
      raise run.exp.method.no_store_error(f"run {workdir!r}")
    opened = open_store(store, tier, expected=identity_of(run), cache_bytes=cache_bytes)
  features = run.exp.method.decode_features(opened)
  decoder = Decoder(run.trainer.model, run.params, run.exp.model, features, sampling, seed=seed)
  decoder.store = opened
  return decoder, run


def run(args) -> int:
  for text in args.prompt:
    try:
      text.encode("utf-8")
    except UnicodeEncodeError as e:   # bytes that are not UTF-8 reach argv as surrogates
      raise UserError(f"--prompt {text!r} is not valid UTF-8 (at character {e.start}); pass UTF-8 text") from None
  sampling = Sampling(args.temperature, args.top_k, args.top_p).validate()
  decoder, run_ = load_decoder(args.workdir, store=args.store, tier=args.tier, sampling=sampling, seed=args.seed,
                               step=args.step, data_dir=args.data, cache_bytes=args.cache_mb << 20,
                               allow_other_data=args.allow_other_data)
  tokenizer = open_data_tokenizer(run_.exp.data.data_dir)   # SentencePiece or Hugging Face, hash-checked
  meta = run_.exp.data_meta
  prompts = [tokenizer.encode(text) for text in args.prompt]
  max_len = max(len(p) for p in prompts) + 1 + args.max_new_tokens
  if max_len > run_.exp.model.max_seq_len:
    raise UserError(f"prompt plus --max_new_tokens is {max_len} tokens, more than the model supports "
                    f"(ModelConfig.max_seq_len={run_.exp.model.max_seq_len})")
  completions = decoder.generate(prompts, max_new_tokens=args.max_new_tokens, bos_id=meta.bos_id, eos_id=meta.eos_id)
  results = [{"tokens": ids, "text": tokenizer.decode(ids)} for ids in completions]
  if args.format == "json":
    print(json.dumps(results[0] if len(results) == 1 else results))
  else:
    print("\n---\n".join(r["text"] for r in results))
  return 0
