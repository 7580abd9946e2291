"""`scone-jax prepare`: a corpus -> a tokenizer and ArrayRecord token shards.

The tokenizer: a SentencePiece model trained on the corpus (the default), a SentencePiece model
given with --vocab, or a Hugging Face tokenizer.json given with --tokenizer (byte-level BPE such as
GPT-2 / GPT-NeoX; hf_tokenizer.py). Its file is copied into DATA and hashed.

Two passes over the corpus (corpus.py; every reader streams, readers.py):
  1. scan: check every document, put it in train or validation by a stable hash of its
     identity and text (token ids for pretokenized input), and keep a bounded, deterministic
     sample of train text;
  2. tokenize: train (or copy) the tokenizer, encode every document, check that it decodes
     back exactly, and write the shards round-robin. Pretokenized documents (.bin / .npy) are
     written as they are (decoded only to count their characters). With --workers N the
     encoding runs in N processes, a bounded window of batches in flight, results taken in
     order: the shards are byte-identical to a 1-worker run.
Everything is written into a temporary directory next to --out that is renamed into place
last (scone_jax.files.atomic_directory): an interrupted prepare never leaves a DATA that looks
complete.
"""
from __future__ import annotations

import argparse
import array
import collections
import dataclasses
import hashlib
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator, Sequence

import numpy as np

from scone_jax.data import corpus as corpus_lib, hf_tokenizer, seqio_task, shards, spool, tokenizer as tokenizer_lib
from scone_jax.errors import UserError
from scone_jax.files import atomic_directory
from scone_jax.outputs import check_output
from scone_jax.progress import Bars, progress_bars

VOCAB_FILE = tokenizer_lib.SPM_FILE
DEFAULT_VOCAB_SIZE = 4096
DEFAULT_VALIDATION_FRACTION = 0.05
DEFAULT_SAMPLE_CHARS = 4_000_000  # tokenizer training text; more barely changes compression
CHARS_PER_SHARD = 64 << 20  # about 20M tokens, 80 MB of int32 per shard
TOKENS_PER_SHARD = 20 << 20  # the same for pretokenized input, sized by tokens
MIN_SHARDS = 4
ENCODE_BATCH = 256  # documents per tokenizer call (and per task of a worker process)
SPOOL_DIR = ".spool"  # inside the directory being written; removed before it is renamed into place
WINDOW_PER_WORKER = 2  # batches in flight per worker process: bounds memory, keeps workers busy


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
  num_chars: dict[str, int]   # characters per split (token ids for pretokenized input)
  fingerprint: str  # of (identity, length) of every document: pass 2 must see the same corpus
  sample: tokenizer_lib.TrainingSample | None


def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--input", action="append", required=True,
                      metavar="GLOB|builtin:python-stdlib|hf:PATH[:SPLIT]|seqio:TASK",
                      help="documents: file globs (repeat or comma-separate; .jsonl, .jsonl.gz, .jsonl.zst = "
                           "one document per line, field --text_field; .parquet = one per row, column "
                           "--text_field; .bin (raw uint16, nanoGPT) and .npy = token ids split at "
                           "--separator_id, written without re-tokenizing; other files = one document each), "
                           "the embedded builtin:python-stdlib, hf:PATH[:SPLIT] (a Hugging Face datasets "
                           "dataset written by save_to_disk, or a dataset name found in the local cache; "
                           "never downloaded; all splits unless SPLIT), or a registered seqio task")
  parser.add_argument("--out", required=True, metavar="DATA", help="directory to write")
  parser.add_argument("--vocab_size", type=int, default=None,
                      help=f"SentencePiece vocabulary size to train (default {DEFAULT_VOCAB_SIZE})")
  parser.add_argument("--vocab", metavar="SPM",
                      help="use this SentencePiece model instead of training one")
  parser.add_argument("--tokenizer", metavar="TOKENIZER_JSON",
                      help="use this Hugging Face tokenizers file (tokenizer.json, e.g. GPT-2's byte-level BPE) "
                           "instead of SentencePiece; special ids come from it")
  parser.add_argument("--model_type", choices=tokenizer_lib.MODEL_TYPES, default="bpe",
                      help="SentencePiece algorithm (default %(default)s)")
  parser.add_argument("--text_field", default="text",
                      help="field of a jsonl line, column of a parquet file or hf: dataset holding the text "
                           "(default %(default)s)")
  parser.add_argument("--separator_id", type=int, metavar="ID",
                      help="token id between the documents of .bin / .npy inputs (dropped; e.g. 50256 for GPT-2)")
  parser.add_argument("--workers", type=int, default=1, metavar="N",
                      help="tokenize in N processes (same shards as 1; default %(default)s)")
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
      args.input, args.out, vocab_size=args.vocab_size, vocab=args.vocab, tokenizer=args.tokenizer,
      model_type=args.model_type, validation_fraction=args.validation_fraction,
      num_shards=args.num_shards, tokenizer_sample_chars=args.tokenizer_sample_chars,
      overwrite=args.overwrite, seqio_modules=args.seqio_module, seqio_feature=args.seqio_feature,
      seqio_splits=args.seqio_split, task_name=args.task_name, max_docs=args.max_docs,
      text_field=args.text_field, separator_id=args.separator_id, workers=args.workers,
      progress=args.progress or None)
  meta = result.meta
  print(f"wrote {result.data_dir} in {result.seconds:.1f}s: vocab_size {meta.vocab_size}, "
        f"source {meta.source}")
  for split in shards.SPLITS:
    print(f"  {split}: {meta.num_documents[split]} documents, {meta.num_tokens[split]} tokens, "
          f"{meta.num_shards[split]} shards")
  print(f"seqio task: {result.task_name}" if result.task_name else
        "seqio task: none (the seqio extra is not installed: pip install 'scone_jax[seqio]')")
  return 0


def prepare(inputs: list[str] | str, out: str, *, vocab_size: int | None = None,
            vocab: str | None = None, tokenizer: str | None = None, model_type: str = "bpe",
            validation_fraction: float = DEFAULT_VALIDATION_FRACTION, num_shards: int | None = None,
            tokenizer_sample_chars: int = DEFAULT_SAMPLE_CHARS, overwrite: bool = False,
            seqio_modules: Sequence[str] = (), seqio_feature: str = "text",
            seqio_splits: list[str] | None = None, task_name: str | None = None,
            max_docs: int | None = None, text_field: str = "text", separator_id: int | None = None,
            workers: int = 1, progress: bool | None = None, register: bool = True) -> PrepareResult:
  """Tokenizes a corpus into DATA = `out` (see shards.py for the layout).

  The tokenizer is trained (SentencePiece, `vocab_size` pieces, default DEFAULT_VOCAB_SIZE), or
  `vocab` (a SentencePiece model), or `tokenizer` (a Hugging Face tokenizer.json). Returns the
  written meta and the name of the seqio task registered for DATA (None when `register` is
  False). `progress=None` shows progress bars only when stderr is a TTY.
  """
  start = time.perf_counter()
  inputs = [inputs] if isinstance(inputs, str) else list(inputs)
  if tokenizer is not None and (vocab is not None or vocab_size is not None):
    given = "--vocab" if vocab is not None else "--vocab_size"
    raise UserError(f"--tokenizer cannot be combined with {given}: the tokenizer file fixes the vocabulary; "
                    "pass one of them")
  if vocab_size is None:
    vocab_size = DEFAULT_VOCAB_SIZE
  elif vocab is None and vocab_size <= 0:
    raise UserError(f"--vocab_size {vocab_size} must be positive")
  if not 0.0 <= validation_fraction < 1.0:
    raise UserError(f"--validation_fraction {validation_fraction} must be in [0, 1)")
  if num_shards is not None and num_shards <= 0:
    raise UserError(f"--num_shards {num_shards} must be positive")
  if max_docs is not None and max_docs <= 0:
    raise UserError(f"--max_docs {max_docs} must be positive")
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
    raise UserError(f"--workers {workers} must be a positive whole number")
  if not text_field:
    raise UserError("--text_field is empty; pass the name of the field that holds the text")
  _check_out(out, overwrite)
  # A given tokenizer fails before the corpus is read.
  given = (hf_tokenizer.HFTokenizer(tokenizer, flag="--tokenizer") if tokenizer is not None
           else tokenizer_lib.Tokenizer(vocab, flag="--vocab") if vocab is not None else None)
  seqio_task.import_modules(list(seqio_modules))
  corpus = corpus_lib.open_corpus(inputs, seqio_feature=seqio_feature, seqio_splits=seqio_splits,
                                  max_docs=max_docs, text_field=text_field, separator_id=separator_id)
  if corpus.pretokenized is not None and given is None:
    raise UserError(f"--input {corpus.files[0]!r} holds token ids: pass the tokenizer they were made with "
                    "(--tokenizer tokenizer.json or --vocab SPM), so that DATA has it")
  # The output guard (scone_jax/outputs.py): DATA never replaces its own corpus or another artifact.
  check_output(out, "data", inputs=[("--input", p) for p in corpus.files] + [("--vocab", vocab or ""),
                                                                             ("--tokenizer", tokenizer or "")],
               replace=overwrite, hint="pass --overwrite to replace it or choose another path")
  _make_parent(out)
  with atomic_directory(out) as tmp_dir, progress_bars(enabled=progress) as bars:
    meta = _prepare_into(tmp_dir, corpus, bars, given, vocab_size=vocab_size, model_type=model_type,
                         validation_fraction=validation_fraction, num_shards=num_shards,
                         sample_chars=tokenizer_sample_chars, workers=workers)
  # The seqio task for DATA, where the seqio extra is installed (the base install has no TensorFlow).
  name = seqio_task.register_prepared(out, task_name) if register and seqio_task.installed() else None
  return PrepareResult(out, meta, name, time.perf_counter() - start)


def _prepare_into(data_dir: str, corpus: corpus_lib.Corpus, bars: Bars, given, *, vocab_size: int,
                  model_type: str, validation_fraction: float, num_shards: int | None, sample_chars: int,
                  workers: int) -> shards.DataMeta:
  train_tokenizer = given is None
  scan = _scan(corpus, validation_fraction, sample_chars if train_tokenizer else None, bars,
               vocab=given)
  if train_tokenizer:
    tokenizer_path = os.path.join(data_dir, tokenizer_lib.SPM_FILE)
    training = bars.task(f"training a {model_type} tokenizer ({vocab_size} pieces, "
                         f"{scan.sample.num_chars} characters)")
    tokenizer_lib.train(scan.sample.sentences(), tokenizer_path, vocab_size, model_type,
                        sampled=scan.sample.dropped)
    training.finish()
    kind = tokenizer_lib.SPM_KIND
  else:
    kind = given.kind
    tokenizer_path = os.path.join(data_dir, given.file_name)
    shutil.copyfile(given.path, tokenizer_path)
  tokenizer = tokenizer_lib.load_kind(kind, tokenizer_path, flag=os.path.basename(tokenizer_path))
  if not train_tokenizer and tokenizer.sha256 != given.sha256:
    raise UserError(f"{given.path!r} changed while prepare was reading it; run again")

  writers, lossy, num_chars, num_bytes = _write_shards(data_dir, corpus, scan, tokenizer, kind, tokenizer_path,
                                                       num_shards, bars, workers)
  flag = "--tokenizer" if kind == hf_tokenizer.KIND else "--vocab"
  if lossy and train_tokenizer:
    raise AssertionError(f"trained tokenizer is not lossless on {lossy[0]!r}")  # a bug, not input
  if lossy:
    print(f"scone-jax prepare: warning: {flag} {given.path!r} does not round-trip {len(lossy)} "
          f"documents exactly (first: {lossy[0]!r}); its normalization changes the text",
          file=sys.stderr)

  shard_sha256 = {os.path.basename(p): tokenizer_lib.file_sha256(p)
                  for writer in writers.values() for p in writer.paths}
  if train_tokenizer:
    provenance = {"trained": True, "model_type": model_type, "sample_characters": scan.sample.num_chars}
  else:
    provenance = {"trained": False, "copied_from": os.path.abspath(given.path)}
  provenance.update(kind=kind, file=os.path.basename(tokenizer_path))
  if kind == hf_tokenizer.KIND:
    provenance["special_tokens"] = tokenizer.special_tokens
  extra = {
      "shard_sha256": shard_sha256,
      "shard_max_id": {k: v for w in writers.values() for k, v in w.shard_max_ids().items()},
      "num_characters": num_chars,
      "validation_fraction": validation_fraction,
      "split_rule": "sha256(identity NUL text)[:8] / 2^64 < validation_fraction",
      "tokenizer": provenance,
      "lossy_documents": len(lossy),
      "skipped_documents": dict(corpus.skipped),
  }
  if corpus.pretokenized is not None:
    extra.update(split_rule="sha256(identity NUL int32 little-endian token ids)[:8] / 2^64 < validation_fraction",
                 lossy_documents=None,   # imported as ids: nothing was encoded, so no round trip to check
                 pretokenized=corpus.pretokenized)
  meta = shards.DataMeta(
      vocab_size=tokenizer.vocab_size, **tokenizer.special_ids,
      tokenizer_sha256=tokenizer.sha256,
      num_documents={s: w.num_documents for s, w in writers.items()},
      num_tokens={s: w.num_tokens for s, w in writers.items()},
      num_shards={s: len(w.paths) for s, w in writers.items()},
      source=corpus.source,
      extra=extra,
      num_bytes=num_bytes)   # None for pretokenized input: it has no text
  shards.write_meta(data_dir, meta)
  return meta


# ---- pass 2: encoding, in this process or in worker processes ----

def _encode_texts(tokenizer, texts: list[str], num_threads: int = -1) -> tuple[list[np.ndarray], list[bool]]:
  """The ids of every text and whether it fails to decode back exactly."""
  ids_batch = tokenizer.encode_batch(texts, num_threads=num_threads)
  decoded = tokenizer.decode_batch(ids_batch, num_threads=num_threads)
  return ([np.asarray(ids, dtype=np.int32) for ids in ids_batch],
          [back != text for back, text in zip(decoded, texts)])


def _decoded_lengths(tokenizer, ids_batch: list[np.ndarray], num_threads: int = -1) -> list[int]:
  """Characters of every decoded document (pretokenized input: ids are kept, text is counted)."""
  return [len(t) for t in tokenizer.decode_batch(ids_batch, num_threads=num_threads)]


_worker_tokenizer = None


def _worker_init(kind: str, path: str) -> None:
  global _worker_tokenizer
  signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the parent's to handle (it ends the pool)
  _worker_tokenizer = tokenizer_lib.load_kind(kind, path, num_threads=1)


def _worker_task(task):
  texts, ids_batch = task
  if texts is not None:
    return _encode_texts(_worker_tokenizer, texts, num_threads=1)
  return _decoded_lengths(_worker_tokenizer, ids_batch, num_threads=1)


def _task(batch: list[corpus_lib.Document]):
  if batch[0].ids is None:
    return [doc.text for doc in batch], None
  return None, [doc.ids for doc in batch]


def _encoded(batches: Iterable[list[corpus_lib.Document]], tokenizer, kind: str, path: str,
             workers: int) -> Iterator[tuple[list[corpus_lib.Document], object]]:
  """(batch, its result) in corpus order; the work runs in `workers` processes when above 1, at
  most WINDOW_PER_WORKER batches per worker in flight (the corpus is never read far ahead)."""
  if workers == 1:
    for batch in batches:
      texts, ids_batch = _task(batch)
      yield batch, (_encode_texts(tokenizer, texts) if texts is not None else _decoded_lengths(tokenizer, ids_batch))
    return
  # spawn: a fresh interpreter per worker (forking a process that runs tokenizer threads can hang).
  # A worker that dies (or fails to start) breaks the executor: an error here, never a hang.
  executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                initializer=_worker_init, initargs=(kind, path))
  try:
    pending: collections.deque = collections.deque()
    for batch in batches:
      pending.append((batch, executor.submit(_worker_task, _task(batch))))
      if len(pending) >= WINDOW_PER_WORKER * workers:
        done, future = pending.popleft()
        yield done, future.result()
    while pending:
      done, future = pending.popleft()
      yield done, future.result()
  except BrokenProcessPool as e:
    raise UserError(f"a --workers process of prepare died ({e}); run again with fewer --workers "
                    "or more memory") from e
  finally:
    executor.shutdown(wait=True, cancel_futures=True)


def _write_shards(data_dir: str, corpus: corpus_lib.Corpus, scan: _Scan, tokenizer, kind: str,
                  tokenizer_path: str, num_shards: int | None, bars: Bars,
                  workers: int) -> tuple[dict[str, spool.SpooledShardWriter], list[str], dict[str, int],
                                         dict[str, int] | None]:
  """Pass 2: encodes every document into its split's shards; returns the writers, the
  identities of documents that do not decode back exactly, the characters per split and the
  UTF-8 bytes per split (each document's text as read, encoded UTF-8, no separator: what bits
  per byte divides by; None for pretokenized input, which has no text)."""
  counts = {"train": scan.is_validation.count(0), "validation": scan.is_validation.count(1)}
  per_shard = TOKENS_PER_SHARD if corpus.pretokenized is not None else CHARS_PER_SHARD
  spool_dir = os.path.join(data_dir, SPOOL_DIR)   # bounded memory for any number of shards (spool.py)
  writers = {split: spool.SpooledShardWriter(
      data_dir, split, _num_shards(num_shards, counts[split], scan.num_chars[split], per_shard), spool_dir)
             for split in shards.SPLITS}
  lossy: list[str] = []
  num_chars = {"train": 0, "validation": 0}
  num_bytes = {"train": 0, "validation": 0}
  fingerprint = hashlib.sha256()
  changed = UserError(f"input {corpus.source!r} changed while prepare was reading it; run again")
  index = 0
  try:
    task = bars.task("tokenizing", total=len(scan.is_validation))
    batches = _batches(corpus.documents(), ENCODE_BATCH)
    for batch, result in _encoded(batches, tokenizer, kind, tokenizer_path, workers):
      if batch[0].ids is None:
        ids_batch, lossy_flags = result
        chars = [len(doc.text) for doc in batch]
        sizes = [len(doc.text.encode("utf-8", "surrogatepass")) for doc in batch]
      else:   # pretokenized: the ids as they are; the result is the decoded length of each
        ids_batch, lossy_flags, chars = [doc.ids for doc in batch], [False] * len(batch), result
        sizes = [0] * len(batch)
      for doc, ids, is_lossy, n_chars, n_bytes in zip(batch, ids_batch, lossy_flags, chars, sizes):
        if index >= len(scan.is_validation):
          raise changed
        fingerprint.update(f"{doc.identity}\0{_size(doc)}\n".encode("utf-8", "surrogatepass"))
        split = "validation" if scan.is_validation[index] else "train"
        writers[split].write(ids)
        num_chars[split] += n_chars
        num_bytes[split] += n_bytes
        if is_lossy:
          lossy.append(doc.identity)
        index += 1
      task.advance(len(batch))
  except BaseException:
    for writer in writers.values():
      writer.abort()
    raise
  finally:
    for writer in writers.values():
      writer.close()   # the shards, one at a time (nothing left to do after abort())
    shutil.rmtree(spool_dir, ignore_errors=True)
  if fingerprint.hexdigest() != scan.fingerprint:
    raise changed
  if not any(writer.num_tokens for writer in writers.values()):
    # Only a --vocab can get here (a trained tokenizer is lossless: text never encodes to
    # nothing): its normalization left no token of any document (e.g. whitespace-only text).
    raise _no_text(corpus)
  return writers, lossy, num_chars, (num_bytes if corpus.pretokenized is None else None)


def _size(doc: corpus_lib.Document) -> int:
  return len(doc.text) if doc.ids is None else len(doc.ids)


def _fraction(doc: corpus_lib.Document) -> float:
  """The split hash of a document: of its identity and text, or of its identity and ids."""
  if doc.ids is None:
    return tokenizer_lib.stable_fraction(doc.identity, doc.text)
  digest = hashlib.sha256(doc.identity.encode("utf-8", "surrogatepass") + b"\0"
                          + np.asarray(doc.ids, dtype="<i4").tobytes()).digest()
  return int.from_bytes(digest[:8], "little") / 2.0**64


def _check_ids(doc: corpus_lib.Document, vocab) -> None:
  low, high = int(doc.ids.min()), int(doc.ids.max())
  if low < 0 or high >= vocab.vocab_size:
    flag = "--tokenizer" if vocab.kind == hf_tokenizer.KIND else "--vocab"
    raise UserError(f"input document {doc.identity!r} holds token id {low if low < 0 else high}, outside the "
                    f"vocabulary of {vocab.vocab_size} of {flag} {vocab.path!r}; pass the tokenizer the ids were "
                    "made with")


def _scan(corpus: corpus_lib.Corpus, validation_fraction: float, sample_chars: int | None,
          bars: Bars, vocab=None) -> _Scan:
  """Pass 1: assigns splits, counts characters (token ids of pretokenized documents, which must
  lie inside `vocab`), samples train text for the tokenizer."""
  is_validation = bytearray()
  fractions = array.array("d")   # 8 + 8 bytes per document, not two Python objects
  lengths = array.array("q")
  fingerprint = hashlib.sha256()
  sample = tokenizer_lib.TrainingSample(sample_chars) if sample_chars is not None else None
  task = bars.task("reading")
  for doc in corpus.documents():
    if doc.ids is not None:
      _check_ids(doc, vocab)
    fraction = _fraction(doc)
    fractions.append(fraction)
    lengths.append(_size(doc))
    is_validation.append(fraction < validation_fraction)
    fingerprint.update(f"{doc.identity}\0{_size(doc)}\n".encode("utf-8", "surrogatepass"))
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


def _num_shards(requested: int | None, num_documents: int, size: int, per_shard: int = CHARS_PER_SHARD) -> int:
  """`requested`, or one shard per `per_shard` characters (or tokens) but at least MIN_SHARDS;
  never more shards than documents (an empty split still gets one, empty, shard)."""
  wanted = requested or max(MIN_SHARDS, math.ceil(size / per_shard))
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
