"""`scone-jax prepare`: a corpus -> a SentencePiece tokenizer and ArrayRecord token shards.

Two passes over the corpus (corpus.py):
  1. scan: check every document, put it in train or validation by a stable hash of its
     identity and text, and keep a bounded, deterministic sample of train text;
  2. tokenize: train (or copy) the tokenizer, encode every document, check that it decodes
     back exactly, and write the shards round-robin.
Everything is written into a temporary directory next to --out that is renamed into place
last (scone_jax.files.atomic_directory): an interrupted prepare never leaves a DATA that looks
complete.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import math
import os
import shutil
import sys
import time
from typing import Sequence

from scone_jax.data import corpus as corpus_lib, seqio_task, shards, tokenizer as tokenizer_lib
from scone_jax.errors import UserError
from scone_jax.files import atomic_directory
from scone_jax.outputs import check_output
from scone_jax.progress import Bars, progress_bars

VOCAB_FILE = "vocab.model"
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_VALIDATION_FRACTION = 0.05
DEFAULT_SAMPLE_CHARS = 4_000_000  # tokenizer training text; more barely changes compression
CHARS_PER_SHARD = 64 << 20  # about 20M tokens, 80 MB of int32 per shard
MIN_SHARDS = 4
ENCODE_BATCH = 256  # documents per SentencePiece call


@dataclasses.dataclass
class PrepareResult:
  data_dir: str
  meta: shards.DataMeta
  task_name: str | None
  seconds: float


@dataclasses.dataclass
class _Scan:
  """What pass 1 learns: the split of every document, in corpus order."""
  is_validation: bytearray
  num_chars: dict[str, int]
  fingerprint: str  # of (identity, length) of every document: pass 2 must see the same corpus
  sample: tokenizer_lib.TrainingSample | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", action="append", required=True,
                      metavar="GLOB|builtin:python-stdlib|seqio:TASK",
                      help="documents: file globs (repeat or comma-separate; .jsonl = one document "
                           "per line, field 'text'; other files = one document each), the embedded "
                           "builtin:python-stdlib, or a registered seqio task")
  parser.add_argument("--out", required=True, metavar="DATA", help="directory to write")
  parser.add_argument("--vocab_size", type=int, default=DEFAULT_VOCAB_SIZE,
                      help="SentencePiece vocabulary size to train (default %(default)s)")
  parser.add_argument("--vocab", metavar="SPM",
                      help="use this SentencePiece model instead of training one")
  parser.add_argument("--model_type", choices=tokenizer_lib.MODEL_TYPES, default="bpe",
                      help="SentencePiece algorithm (default %(default)s)")
  parser.add_argument("--validation_fraction", type=float, default=DEFAULT_VALIDATION_FRACTION,
                      help="share of documents held out for validation (default %(default)s)")
  parser.add_argument("--num_shards", type=int,
                      help=f"shards per split (default: at least {MIN_SHARDS}, one per "
                           f"{CHARS_PER_SHARD >> 20}M characters)")
  parser.add_argument("--tokenizer_sample_chars", type=int, default=DEFAULT_SAMPLE_CHARS,
                      help="train the tokenizer on at most this many characters "
                           "(default %(default)s)")
  parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
  parser.add_argument("--seqio_module", action="append", default=[], metavar="MODULE",
                      help="import MODULE first (it registers seqio tasks); repeatable")
  parser.add_argument("--seqio_feature", default="text",
                      help="text feature of a seqio:TASK input (default %(default)s)")
  parser.add_argument("--seqio_split", action="append", default=None, metavar="SPLIT",
                      help="read only these splits of a seqio:TASK input (default: all)")
  parser.add_argument("--task_name", help="name of the seqio task registered for DATA "
                                          "(default scone_jax_<basename of DATA>)")
  parser.add_argument("--progress", action="store_true", help="show progress even without a TTY")
  parser.add_argument("--max_docs", type=int, help=argparse.SUPPRESS)  # tests: a corpus prefix


def run(args: argparse.Namespace) -> int:
  result = prepare(
      args.input, args.out, vocab_size=args.vocab_size, vocab=args.vocab,
      model_type=args.model_type, validation_fraction=args.validation_fraction,
      num_shards=args.num_shards, tokenizer_sample_chars=args.tokenizer_sample_chars,
      overwrite=args.overwrite, seqio_modules=args.seqio_module, seqio_feature=args.seqio_feature,
      seqio_splits=args.seqio_split, task_name=args.task_name, max_docs=args.max_docs,
      progress=args.progress or None)
  meta = result.meta
  print(f"wrote {result.data_dir} in {result.seconds:.1f}s: vocab_size {meta.vocab_size}, "
        f"source {meta.source}")
  for split in shards.SPLITS:
    print(f"  {split}: {meta.num_documents[split]} documents, {meta.num_tokens[split]} tokens, "
          f"{meta.num_shards[split]} shards")
  print(f"seqio task: {result.task_name}")
  return 0


def prepare(inputs: list[str] | str, out: str, *, vocab_size: int = DEFAULT_VOCAB_SIZE,
            vocab: str | None = None, model_type: str = "bpe",
            validation_fraction: float = DEFAULT_VALIDATION_FRACTION, num_shards: int | None = None,
            tokenizer_sample_chars: int = DEFAULT_SAMPLE_CHARS, overwrite: bool = False,
            seqio_modules: Sequence[str] = (), seqio_feature: str = "text",
            seqio_splits: list[str] | None = None, task_name: str | None = None,
            max_docs: int | None = None, progress: bool | None = None,
            register: bool = True) -> PrepareResult:
  """Tokenizes a corpus into DATA = `out` (see shards.py for the layout).

  Returns the written meta and the name of the seqio task registered for DATA (None when
  `register` is False). `progress=None` shows progress bars only when stderr is a TTY.
  """
  start = time.perf_counter()
  inputs = [inputs] if isinstance(inputs, str) else list(inputs)
  if vocab is None and vocab_size <= 0:
    raise UserError(f"--vocab_size {vocab_size} must be positive")
  if not 0.0 <= validation_fraction < 1.0:
    raise UserError(f"--validation_fraction {validation_fraction} must be in [0, 1)")
  if num_shards is not None and num_shards <= 0:
    raise UserError(f"--num_shards {num_shards} must be positive")
  if max_docs is not None and max_docs <= 0:
    raise UserError(f"--max_docs {max_docs} must be positive")
  _check_out(out, overwrite)
  if vocab is not None:
    tokenizer_lib.Tokenizer(vocab, flag="--vocab")  # fail before reading the corpus
  seqio_task.import_modules(list(seqio_modules))
  corpus = corpus_lib.open_corpus(inputs, seqio_feature=seqio_feature, seqio_splits=seqio_splits,
                                  max_docs=max_docs)
  # The output guard (scone_jax/outputs.py): DATA never replaces its own corpus or another artifact.
  check_output(out, "data", inputs=[("--input", p) for p in corpus.files] + [("--vocab", vocab or "")],
               replace=overwrite, hint="pass --overwrite to replace it or choose another path")
  _make_parent(out)
  with atomic_directory(out) as tmp_dir, progress_bars(enabled=progress) as bars:
    meta = _prepare_into(tmp_dir, corpus, bars, vocab_size=vocab_size, vocab=vocab,
                         model_type=model_type, validation_fraction=validation_fraction,
                         num_shards=num_shards, sample_chars=tokenizer_sample_chars)
  name = seqio_task.register_prepared(out, task_name) if register else None
  return PrepareResult(out, meta, name, time.perf_counter() - start)


def _prepare_into(data_dir: str, corpus: corpus_lib.Corpus, bars: Bars, *, vocab_size: int,
                  vocab: str | None, model_type: str, validation_fraction: float,
                  num_shards: int | None, sample_chars: int) -> shards.DataMeta:
  train_tokenizer = vocab is None
  scan = _scan(corpus, validation_fraction, sample_chars if train_tokenizer else None, bars)
  vocab_path = os.path.join(data_dir, VOCAB_FILE)
  if train_tokenizer:
    training = bars.task(f"training a {model_type} tokenizer ({vocab_size} pieces, "
                         f"{scan.sample.num_chars} characters)")
    tokenizer_lib.train(scan.sample.sentences(), vocab_path, vocab_size, model_type,
                        sampled=scan.sample.dropped)
    training.finish()
  else:
    shutil.copyfile(vocab, vocab_path)
  tokenizer = tokenizer_lib.Tokenizer(vocab_path)

  writers, lossy = _write_shards(data_dir, corpus, scan, tokenizer, num_shards, bars)
  if lossy and train_tokenizer:
    raise AssertionError(f"trained tokenizer is not lossless on {lossy[0]!r}")  # a bug, not input
  if lossy:
    print(f"scone-jax prepare: warning: --vocab {vocab!r} does not round-trip {len(lossy)} "
          f"documents exactly (first: {lossy[0]!r}); its normalization changes the text",
          file=sys.stderr)

  shard_sha256 = {os.path.basename(p): tokenizer_lib.file_sha256(p)
                  for writer in writers.values() for p in writer.paths}
  meta = shards.DataMeta(
      vocab_size=tokenizer.vocab_size, **tokenizer.special_ids,
      tokenizer_sha256=tokenizer.sha256,
      num_documents={s: w.num_documents for s, w in writers.items()},
      num_tokens={s: w.num_tokens for s, w in writers.items()},
      num_shards={s: len(w.paths) for s, w in writers.items()},
      source=corpus.source,
      extra={
          "shard_sha256": shard_sha256,
          "shard_max_id": {k: v for w in writers.values() for k, v in w.shard_max_ids().items()},
          "num_characters": scan.num_chars,
          "validation_fraction": validation_fraction,
          "split_rule": "sha256(identity NUL text)[:8] / 2^64 < validation_fraction",
          "tokenizer": ({"trained": True, "model_type": model_type,
                         "sample_characters": scan.sample.num_chars} if train_tokenizer
                        else {"trained": False, "copied_from": os.path.abspath(vocab)}),
          "lossy_documents": len(lossy),
          "skipped_documents": dict(corpus.skipped),
      })
  shards.write_meta(data_dir, meta)
  return meta


def _write_shards(data_dir: str, corpus: corpus_lib.Corpus, scan: _Scan,
                  tokenizer: tokenizer_lib.Tokenizer, num_shards: int | None,
                  bars: Bars) -> tuple[dict[str, shards.ShardWriter], list[str]]:
  """Pass 2: encodes every document into its split's shards; returns the writers and the
  identities of documents that do not decode back exactly."""
  counts = {"train": scan.is_validation.count(0), "validation": scan.is_validation.count(1)}
  writers = {split: shards.ShardWriter(
      data_dir, split, _num_shards(num_shards, counts[split], scan.num_chars[split]))
             for split in shards.SPLITS}
  lossy: list[str] = []
  fingerprint = hashlib.sha256()
  changed = UserError(f"input {corpus.source!r} changed while prepare was reading it; run again")
  index = 0
  try:
    task = bars.task("tokenizing", total=len(scan.is_validation))
    for batch in _batches(corpus.documents(), ENCODE_BATCH):
      ids_batch = tokenizer.encode_batch([doc.text for doc in batch])
      decoded = tokenizer.decode_batch(ids_batch)
      for doc, ids, text_back in zip(batch, ids_batch, decoded):
        if index >= len(scan.is_validation):
          raise changed
        fingerprint.update(f"{doc.identity}\0{len(doc.text)}\n".encode("utf-8", "surrogatepass"))
        writers["validation" if scan.is_validation[index] else "train"].write(ids)
        if text_back != doc.text:
          lossy.append(doc.identity)
        index += 1
      task.advance(len(batch))
  finally:
    for writer in writers.values():
      writer.close()
  if fingerprint.hexdigest() != scan.fingerprint:
    raise changed
  if not any(writer.num_tokens for writer in writers.values()):
    # Only a --vocab can get here (a trained tokenizer is lossless: text never encodes to
    # nothing): its normalization left no token of any document (e.g. whitespace-only text).
    raise _no_text(corpus)
  return writers, lossy


def _scan(corpus: corpus_lib.Corpus, validation_fraction: float, sample_chars: int | None,
          bars: Bars) -> _Scan:
  """Pass 1: assigns splits, counts characters, samples train text for the tokenizer."""
  is_validation = bytearray()
  fractions: list[float] = []
  lengths: list[int] = []
  fingerprint = hashlib.sha256()
  sample = tokenizer_lib.TrainingSample(sample_chars) if sample_chars is not None else None
  task = bars.task("reading")
  for doc in corpus.documents():
    fraction = tokenizer_lib.stable_fraction(doc.identity, doc.text)
    fractions.append(fraction)
    lengths.append(len(doc.text))
    is_validation.append(fraction < validation_fraction)
    fingerprint.update(f"{doc.identity}\0{len(doc.text)}\n".encode("utf-8", "surrogatepass"))
    if sample is not None and not is_validation[-1]:
      sample.add_document(doc.text)
    task.advance()
  task.finish()
  if not is_validation:
    raise _no_text(corpus)
  # At least one document on each side once there are two: the extreme hash moves over.
  moved = None
  if len(is_validation) >= 2 and not any(is_validation):
    moved = min(range(len(fractions)), key=fractions.__getitem__)
  elif len(is_validation) >= 2 and all(is_validation):
    moved = max(range(len(fractions)), key=fractions.__getitem__)
  if moved is not None:
    is_validation[moved] ^= 1
    if sample is not None:  # the train split changed: sample it again (small corpora only)
      sample = tokenizer_lib.TrainingSample(sample_chars)
      for index, doc in enumerate(corpus.documents()):
        if index < len(is_validation) and not is_validation[index]:
          sample.add_document(doc.text)
  num_chars = {"train": 0, "validation": 0}
  for in_validation, length in zip(is_validation, lengths):
    num_chars["validation" if in_validation else "train"] += length
  return _Scan(is_validation, num_chars, fingerprint.hexdigest(), sample)


def _no_text(corpus: corpus_lib.Corpus) -> UserError:
  """The one error for a corpus without text: no document, only empty ones (found by pass 1,
  before a tokenizer is trained or copied), or only documents that encode to no token at all
  (found by pass 2: a --vocab whose normalization drops their text)."""
  return UserError(f"input {corpus.source!r} holds no documents (or only empty ones); "
                   "pass a corpus with text in it")


def _num_shards(requested: int | None, num_documents: int, num_chars: int) -> int:
  """`requested`, or one shard per CHARS_PER_SHARD but at least MIN_SHARDS; never more
  shards than documents (an empty split still gets one, empty, shard)."""
  wanted = requested or max(MIN_SHARDS, math.ceil(num_chars / CHARS_PER_SHARD))
  return max(1, min(wanted, num_documents))


def _batches(items, size: int):
  batch = []
  for item in items:
    batch.append(item)
    if len(batch) == size:
      yield batch
      batch = []
  if batch:
    yield batch


def _check_out(out: str, overwrite: bool) -> None:
  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"--out {out!r} is a file; pass a directory path")
  if os.path.isdir(out) and os.listdir(out) and not overwrite:
    raise UserError(f"--out {out!r} is not empty; pass --overwrite to replace it "
                    "or choose another path")


def _make_parent(out: str) -> None:
  """Creates the directory `out` goes in, or says what is in the way."""
  parent = os.path.dirname(os.path.abspath(out))
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    blocker = parent
    while not os.path.exists(blocker) and os.path.dirname(blocker) != blocker:
      blocker = os.path.dirname(blocker)
    why = f"{blocker!r} is a file" if os.path.isfile(blocker) else (e.strerror or str(e))
    raise UserError(f"cannot write --out {out!r}: {why}; choose a writable directory") from e
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"cannot write --out {out!r}: {parent!r} is not writable; choose a writable directory")
