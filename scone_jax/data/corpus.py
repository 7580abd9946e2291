"""Document sources for `scone-jax prepare`: what a corpus is and how its documents are read.

A corpus is re-iterable: `documents()` yields the same `Document`s in the same order every
time (prepare reads it twice: once to split and sample, once to tokenize). Every source streams
(readers.py): no file is held in memory whole, except a plain text file, which is one document.
Sources:
  builtin:python-stdlib  the running interpreter's standard library, .py files, no tests
  GLOB[,GLOB...]         files: `.jsonl`, `.jsonl.gz`, `.jsonl.zst` = one document per line (field
                         `text_field`), `.parquet` = one per row (column `text_field`), `.bin` /
                         `.npy` = token ids split at `separator_id` (pretokenized), else one per file
  hf:PATH[:SPLIT]        a Hugging Face datasets dataset (save_to_disk, or a name in the local cache)
  seqio:TASK             a registered seqio Task's text feature (see seqio_task.py)
"""
from __future__ import annotations

import dataclasses
import glob
import os
import sysconfig
from typing import Callable, Iterator

from scone_jax.data import readers, seqio_task
from scone_jax.data.readers import Document
from scone_jax.errors import UserError

BUILTIN_STDLIB = "builtin:python-stdlib"
SEQIO_PREFIX = "seqio:"
HF_PREFIX = readers.HF_PREFIX
# Directory names that hold tests or their data; never part of the stdlib corpus.
TEST_DIR_NAMES = frozenset({"test", "tests", "testing", "idle_test", "testdata", "test_data"})
SKIPPED_DIR_NAMES = frozenset({"site-packages", "dist-packages", "__pycache__"})

__all__ = ["Corpus", "Document", "open_corpus"]


@dataclasses.dataclass
class Corpus:
  """A named, re-iterable stream of documents."""
  source: str  # as recorded in meta.json
  read_all: Callable[[], Iterator[Document]]
  max_docs: int | None = None
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # why -> how many
  files: tuple[str, ...] = ()   # the local files or directories it reads (outputs stay out of them)
  # Token ids, not text (.bin / .npy): {"separator_id": N, "files": {path: dtype}}; None for text.
  pretokenized: dict | None = None

  def documents(self) -> Iterator[Document]:
    """Yields the non-empty documents in a fixed order (at most `max_docs`)."""
    count = 0
    self.skipped.clear()
    for doc in self.read_all():
      if self.max_docs is not None and count >= self.max_docs:
        return
      if not doc.text if doc.ids is None else not len(doc.ids):
        self.skipped["empty"] = self.skipped.get("empty", 0) + 1
        continue
      count += 1
      yield doc


def is_test_dir(name: str) -> bool:
  return name in TEST_DIR_NAMES or name.startswith("test_") or name.endswith(("_test", "_tests"))


def stdlib_root() -> str:
  return sysconfig.get_paths()["stdlib"]


def stdlib_files(root: str | None = None) -> list[str]:
  """Sorted paths (relative to `root`) of the standard library's .py files, tests excluded."""
  root = root or stdlib_root()
  found = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIR_NAMES and not is_test_dir(d)]
    rel = os.path.relpath(dirpath, root)
    for name in filenames:
      if name.endswith(".py"):
        found.append(os.path.normpath(os.path.join(rel, name)))
  return sorted(found)


def read_text_file(path: str) -> str:
  """The exact text of a UTF-8 file (newlines untouched); UserError for binary or non-UTF-8."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise UserError(f"cannot read input {path!r}: {e.strerror or e}") from e
  if b"\0" in data:
    raise UserError(f"input {path!r} is a binary file (it contains NUL bytes); "
                    "pass text files only")
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError as e:
    raise UserError(f"input {path!r} is not UTF-8 (bad byte at offset {e.start}); "
                    "convert it to UTF-8 or leave it out") from e


def _stdlib_corpus() -> Corpus:
  root = stdlib_root()
  paths = stdlib_files(root)
  if not paths:
    raise UserError(f"{BUILTIN_STDLIB}: no .py files under {root!r}; pass --input GLOB instead")
  skipped: dict[str, int] = {}

  def read() -> Iterator[Document]:
    for rel in paths:
      try:
        text = read_text_file(os.path.join(root, rel))
      except UserError:
        # The interpreter's own files are not the user's to fix: leave odd ones out.
        skipped["unreadable"] = skipped.get("unreadable", 0) + 1
        continue
      yield Document(rel, text)

  return Corpus(source=f"{BUILTIN_STDLIB} ({root})", read_all=read, skipped=skipped, files=(root,))


def expand_globs(patterns: list[str]) -> list[str]:
  """Files matched by each pattern (sorted per pattern, duplicates dropped, first wins)."""
  paths: list[str] = []
  seen: set[str] = set()
  for pattern in patterns:
    matched = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                     if os.path.isfile(p))
    if not matched:
      raise UserError(f"--input {pattern!r} matches no files; check the path or quote the glob")
    for path in matched:
      key = os.path.realpath(path)
      if key not in seen:
        seen.add(key)
        paths.append(path)
  return paths


def _file_corpus(patterns: list[str], text_field: str, separator_id: int | None) -> Corpus:
  paths = expand_globs(patterns)
  token_paths = [p for p in paths if readers.is_tokens(p)]
  if token_paths and len(token_paths) != len(paths):
    text = next(p for p in paths if not readers.is_tokens(p))
    raise UserError(f"--input {token_paths[0]!r} holds token ids and {text!r} text: pass token files "
                    "(.bin, .npy) alone")
  if token_paths:
    return _token_corpus(patterns, token_paths, separator_id)
  for path in paths:
    if readers.is_parquet(path):
      readers.check_parquet(path, text_field)   # a missing column is refused before anything is read

  def read() -> Iterator[Document]:
    for path in paths:
      if readers.is_jsonl(path):
        yield from readers.jsonl_documents(path, text_field)
      elif readers.is_parquet(path):
        yield from readers.parquet_documents(path, text_field)
      else:
        yield Document(path, read_text_file(path))

  return Corpus(source=",".join(patterns), read_all=read, files=tuple(paths))


def _token_corpus(patterns: list[str], paths: list[str], separator_id: int | None) -> Corpus:
  if separator_id is None:
    raise UserError(f"--input {paths[0]!r} holds token ids: pass --separator_id ID, the id between its documents "
                    "(50256 for GPT-2's <|endoftext|>)")
  files = [readers.open_tokens(p) for p in paths]

  def read() -> Iterator[Document]:
    for tokens in files:
      yield from readers.token_documents(tokens, separator_id)

  info = {"separator_id": separator_id, "files": {f.path: str(f.dtype) for f in files}}
  return Corpus(source=f"{','.join(patterns)} (token ids, separator {separator_id})", read_all=read,
                files=tuple(paths), pretokenized=info)


def _hf_corpus(item: str, text_field: str) -> Corpus:
  hf = readers.open_hf(item, text_field)
  return Corpus(source=hf.source, read_all=lambda: readers.hf_documents(hf, text_field), files=hf.files)


def _seqio_corpus(task_name: str, feature: str, splits: list[str] | None) -> Corpus:
  task_splits = seqio_task.task_text_splits(task_name, feature, splits)

  def read() -> Iterator[Document]:
    for split in task_splits:
      for index, text in enumerate(seqio_task.task_texts(task_name, split, feature)):
        yield Document(f"{task_name}/{split}:{index}", text)

  source = f"{SEQIO_PREFIX}{task_name} ({feature}; {','.join(task_splits)})"
  return Corpus(source=source, read_all=read)


def open_corpus(inputs: list[str], *, seqio_feature: str = "text",
                seqio_splits: list[str] | None = None, max_docs: int | None = None,
                text_field: str = "text", separator_id: int | None = None) -> Corpus:
  """The corpus named by --input values: one builtin, hf: or seqio source, or any number of globs.
  `text_field` is the field of jsonl lines, parquet rows and hf: datasets; `separator_id` the id
  between documents of token files."""
  items = [part.strip() for value in inputs for part in value.split(",") if part.strip()]
  if not items:
    raise UserError("--input is empty: pass a glob, builtin:python-stdlib, hf:PATH or seqio:TASK")
  special = [i for i in items if i == BUILTIN_STDLIB or i.startswith((SEQIO_PREFIX, "builtin:", HF_PREFIX))]
  if special and len(items) > 1:
    raise UserError(f"--input {special[0]!r} cannot be combined with other inputs; pass it alone")
  item = items[0]
  if item == BUILTIN_STDLIB:
    corpus = _stdlib_corpus()
  elif item.startswith("builtin:"):
    raise UserError(f"--input {item!r}: the only builtin corpus is {BUILTIN_STDLIB}")
  elif item.startswith(SEQIO_PREFIX):
    corpus = _seqio_corpus(item[len(SEQIO_PREFIX):], seqio_feature, seqio_splits)
  elif item.startswith(HF_PREFIX):
    corpus = _hf_corpus(item, text_field)
  else:
    corpus = _file_corpus(items, text_field, separator_id)
  if separator_id is not None and corpus.pretokenized is None:
    raise UserError("--separator_id applies to token files (.bin, .npy) only; drop it or pass such files")
  corpus.max_docs = max_docs
  return corpus
