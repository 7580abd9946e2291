"""Streaming document readers for `prepare`: no reader holds a whole file in memory.

  .jsonl, .jsonl.gz, .jsonl.zst   one JSON object per line, its string field `text_field`
                                  (zstandard: the `zstd` extra)
  .parquet                        the string column `text_field`, read in record batches through
                                  pyarrow.dataset
  hf:PATH[:SPLIT] / hf:NAME[:SPLIT]
                                  a Hugging Face `datasets` dataset written by save_to_disk, or a
                                  dataset in the local cache (offline: nothing is downloaded);
                                  the `hf` extra
  .bin, .npy                      token ids (pretokenized): nanoGPT-style raw little-endian uint16
                                  or a 1-D integer .npy, documents separated by `separator_id`

Each reader yields corpus.Document(identity, text) or, for token ids, Document(identity, None, ids).
Identities: `PATH:LINE` (jsonl, 1-based, as before), `PATH:ROW` (parquet, 0-based row of the file),
`hf:SOURCE/SPLIT:ROW`, `PATH:INDEX` (token files: the 0-based index of the separator-delimited
piece, empty pieces included). They name a document stably, so the validation split is stable.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import zlib
from typing import Iterator, NamedTuple

import numpy as np

from scone_jax.errors import UserError

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
PARQUET_SUFFIXES = (".parquet",)
TOKEN_SUFFIXES = (".bin", ".npy")
HF_PREFIX = "hf:"
BIN_DTYPE = np.dtype("<u2")   # nanoGPT's train.bin / val.bin
TOKEN_CHUNK = 1 << 22   # token ids read per block (8-16 MB)
PARQUET_BATCH_ROWS = 1024
_INT32 = np.iinfo(np.int32)


class Document(NamedTuple):
  """One document: `identity` names it stably; `text`, or `ids` (token ids) for pretokenized input."""
  identity: str
  text: str | None
  ids: np.ndarray | None = None


def is_jsonl(path: str) -> bool:
  return path.endswith(JSONL_SUFFIXES)


def is_parquet(path: str) -> bool:
  return path.endswith(PARQUET_SUFFIXES)


def is_tokens(path: str) -> bool:
  return path.endswith(TOKEN_SUFFIXES)


# ---- jsonl (plain, gzip, zstandard) ----

def _import_zstandard(path: str):
  try:
    import zstandard
  except ImportError as e:
    raise UserError(f"input {path!r} is zstandard-compressed and needs the zstandard package: "
                    "pip install 'scone_jax[zstd]'") from e
  return zstandard


@contextlib.contextmanager
def _open_lines(path: str) -> Iterator[io.BufferedIOBase]:
  """A binary stream of the file's decompressed bytes, read block by block."""
  try:
    f = open(path, "rb")
  except OSError as e:
    raise UserError(f"cannot read input {path!r}: {e.strerror or e}") from e
  try:
    if path.endswith(".gz"):
      with gzip.GzipFile(fileobj=f, mode="rb") as stream:
        yield stream
    elif path.endswith(".zst"):
      zstandard = _import_zstandard(path)
      reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True)
      with io.BufferedReader(reader, buffer_size=1 << 20) as stream:
        yield stream
    else:
      yield f
  finally:
    f.close()


def _corrupt(path: str, line_no: int, e: BaseException) -> UserError:
  why = " ".join(str(e).split())[:120] or type(e).__name__
  return UserError(f"input {path!r} cannot be read at line {line_no + 1} (truncated or corrupt: {why}); "
                   "check the file or leave it out")


def jsonl_documents(path: str, field: str = "text") -> Iterator[Document]:
  """One document per non-blank line: `field` of its JSON object. Lines end at '\\n' only (a raw
  U+2028 inside a JSON string stays inside it)."""
  line_no = 0
  with _open_lines(path) as stream:
    lines = iter(stream)
    while True:
      try:
        raw = next(lines, None)
      except (OSError, EOFError, zlib.error) as e:
        raise _corrupt(path, line_no, e) from e
      except Exception as e:   # zstandard.ZstdError
        if type(e).__name__ == "ZstdError":
          raise _corrupt(path, line_no, e) from e
        raise
      if raw is None:
        return
      line_no += 1
      if not raw.strip():
        continue
      if b"\0" in raw:
        raise UserError(f"input {path!r} line {line_no} holds NUL bytes: it is not a text jsonl file; "
                        "pass JSON lines only")
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise UserError(f"input {path!r} line {line_no} is not UTF-8 (bad byte at offset {e.start}); "
                        "convert it to UTF-8 or leave it out") from e
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(f"input {path!r} line {line_no} is not JSON ({e.msg}); "
                        f"each line must be an object with a string field {field!r}") from e
      if not isinstance(record, dict) or not isinstance(record.get(field), str):
        found = f" (its fields: {', '.join(sorted(map(str, record))[:8])})" if isinstance(record, dict) else ""
        raise UserError(f"input {path!r} line {line_no} has no string field {field!r}{found}; "
                        f"each line must be an object like {{\"{field}\": \"...\"}} (--text_field names the field)")
      text = record[field]
      if (b"\\ud" in raw or b"\\uD" in raw) and not _is_unicode(text):
        raise UserError(f"input {path!r} line {line_no} holds an unpaired surrogate escape (\\ud800-\\udfff), "
                        "which is not text; fix the escape or leave the line out")
      yield Document(f"{path}:{line_no}", text)


def _is_unicode(text: str) -> bool:
  try:
    text.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return True


# ---- parquet ----

def _string_column(where: str, schema, field: str) -> None:
  import pyarrow as pa
  if field not in schema.names:
    raise UserError(f"{where} has no column {field!r} (its columns: {', '.join(schema.names[:12])}); "
                    "pass --text_field COLUMN")
  kind = schema.field(field).type
  is_text = pa.types.is_string(kind) or pa.types.is_large_string(kind) or getattr(pa.types, "is_string_view",
                                                                                  lambda _: False)(kind)
  if pa.types.is_dictionary(kind):
    is_text = pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)
  if not is_text:
    raise UserError(f"{where} column {field!r} holds {kind}, not strings; pass --text_field with a text column")


def check_parquet(path: str, field: str) -> None:
  """Refuses a file that is not parquet or lacks the text column (before anything is read)."""
  import pyarrow.dataset as ds
  try:
    schema = ds.dataset(path, format="parquet").schema
  except Exception as e:   # pyarrow.ArrowInvalid, OSError
    raise UserError(f"input {path!r} cannot be read as parquet ({' '.join(str(e).split())[:120]}); "
                    "check the file or leave it out") from e
  _string_column(f"input {path!r}", schema, field)


def parquet_documents(path: str, field: str = "text") -> Iterator[Document]:
  """Row r of the file (null = empty, skipped as such) in file order, record batch by record batch."""
  import pyarrow.dataset as ds
  check_parquet(path, field)
  scanner = ds.dataset(path, format="parquet").scanner(columns=[field], batch_size=PARQUET_BATCH_ROWS,
                                                       use_threads=False)
  row = 0
  try:
    for batch in scanner.to_batches():
      for text in batch.column(0).to_pylist():
        yield Document(f"{path}:{row}", text or "")
        row += 1
  except OSError as e:
    raise UserError(f"input {path!r} cannot be read past row {row} ({' '.join(str(e).split())[:120]}); "
                    "check the file or leave it out") from e


# ---- Hugging Face datasets ----

def _import_datasets(item: str):
  try:
    import datasets
  except ImportError as e:
    raise UserError(f"--input {item!r} needs the datasets package: pip install 'scone_jax[hf]'") from e
  datasets.utils.logging.set_verbosity_error()
  datasets.disable_progress_bars()
  return datasets


@contextlib.contextmanager
def _offline(datasets):
  """Nothing is downloaded: the hub is off for the duration (datasets reads config at call time)."""
  saved = (datasets.config.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE"), os.environ.get("HF_DATASETS_OFFLINE"))
  datasets.config.HF_HUB_OFFLINE = True
  os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
  try:
    yield
  finally:
    datasets.config.HF_HUB_OFFLINE = saved[0]
    for name, value in (("HF_HUB_OFFLINE", saved[1]), ("HF_DATASETS_OFFLINE", saved[2])):
      if value is None:
        os.environ.pop(name, None)
      else:
        os.environ[name] = value


class HFSource(NamedTuple):
  name: str                   # the path or dataset name, as given
  source: str                 # as meta.json records it
  splits: list[tuple[str, object]]   # (split name, datasets.Dataset) in reading order
  files: tuple[str, ...]      # what it reads (the output guard keeps DATA out of them)


def parse_hf(item: str) -> tuple[str, str | None]:
  """'hf:PATH_OR_NAME[:SPLIT]' -> (path or name, split or None). A path is cut at the first ':'
  after which the left part is an existing directory (so a directory whose name holds ':' works);
  a dataset name has no ':', so it is cut at the first one (the split may be a slice such as
  'train[:10%]' for a cached dataset)."""
  rest = item[len(HF_PREFIX):]
  if not rest:
    raise UserError(f"--input {item!r} names no dataset; pass hf:PATH[:SPLIT] (a directory written by save_to_disk)")
  if os.path.isdir(os.path.expanduser(rest)) or ":" not in rest:
    return rest, None
  cuts = [i for i, c in enumerate(rest) if c == ":"]
  cut = next((i for i in cuts if os.path.isdir(os.path.expanduser(rest[:i]))), cuts[0])
  name, split = rest[:cut], rest[cut + 1:]
  if not name or not split:
    raise UserError(f"--input {item!r}: pass hf:PATH[:SPLIT] with a dataset and a split name")
  return name, split


def open_hf(item: str, field: str) -> HFSource:
  """The dataset of --input hf:...: load_from_disk for a directory, else the local cache (offline)."""
  name, split = parse_hf(item)
  datasets = _import_datasets(item)
  path = os.path.expanduser(name)
  if os.path.isdir(path):
    try:
      loaded = datasets.load_from_disk(path)
    except Exception as e:   # FileNotFoundError for a directory save_to_disk did not write
      raise UserError(f"--input {item!r}: {path!r} is not a dataset written by save_to_disk "
                      f"({' '.join(str(e).split())[:100]}); pass such a directory, or its data files as "
                      "--input globs") from e
  elif os.path.exists(path):
    raise UserError(f"--input {item!r}: {path!r} is not a directory; pass a directory written by save_to_disk")
  elif name.startswith(("/", ".", "~")) or name.count("/") > 1:   # a path, not a hub name (NAME or OWNER/NAME)
    raise UserError(f"--input {item!r}: no directory {path!r}; pass a directory written by save_to_disk")
  else:
    try:
      with _offline(datasets):
        loaded = datasets.load_dataset(name, split=split)
    except Exception as e:   # ConnectionError (not cached: offline), ValueError, FileNotFoundError
      raise UserError(f"--input {item!r}: no directory {path!r} and no dataset {name!r} in the local Hugging Face "
                      "cache (nothing is downloaded); pass a directory written by save_to_disk") from e
  if isinstance(loaded, datasets.DatasetDict):
    if split is not None:
      if split not in loaded:
        raise UserError(f"--input {item!r}: the dataset has no split {split!r} (its splits: "
                        f"{', '.join(loaded)}); pass one of them or none (all)")
      parts = [(split, loaded[split])]
    else:
      parts = list(loaded.items())
  else:   # one Dataset: saved alone, or the split asked of the cache
    parts = [(split or (str(loaded.split) if loaded.split else "all"), loaded)]
  for part_name, part in parts:
    _string_column(f"--input {item!r} split {part_name!r}", part.data.schema, field)
  files = tuple(sorted({os.path.dirname(c["filename"]) for _, part in parts for c in part.cache_files}))
  if os.path.isdir(path):
    files = (path,)
  source = f"{HF_PREFIX}{name} ({field}; {','.join(p for p, _ in parts)})"
  return HFSource(name, source, parts, files)


def hf_documents(hf: HFSource, field: str) -> Iterator[Document]:
  """Row r of each split (null = empty), split by split, in the dataset's order."""
  for split, part in hf.splits:
    row = 0
    for batch in part.select_columns([field]).with_format(None).iter(batch_size=PARQUET_BATCH_ROWS):
      for text in batch[field]:
        yield Document(f"{HF_PREFIX}{hf.name}/{split}:{row}", text or "")
        row += 1


# ---- token ids (pretokenized) ----

class TokenFile(NamedTuple):
  path: str
  dtype: np.dtype
  offset: int      # bytes before the first id
  count: int       # ids in the file


def open_tokens(path: str) -> TokenFile:
  """The layout of a .bin (raw uint16) or .npy (1-D integers) file; UserError for anything else."""
  try:
    size = os.path.getsize(path)
    if path.endswith(".npy"):
      with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
          shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
          shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
          raise ValueError(f"unsupported .npy version {version}")
        offset = f.tell()
      if len(shape) != 1 or dtype.kind not in "iu" or dtype.hasobject:
        raise UserError(f"input {path!r} holds an array of dtype {dtype} and shape {shape}, not one row of integer "
                        "token ids; save the ids as a 1-D integer array")
      count = int(shape[0])
      if offset + count * dtype.itemsize > size:
        raise UserError(f"input {path!r} is truncated ({size} bytes for {count} ids); write it again")
      return TokenFile(path, dtype, offset, count)
    if size % BIN_DTYPE.itemsize:
      raise UserError(f"input {path!r} has {size} bytes, not a whole number of uint16 token ids; "
                      "pass a nanoGPT-style .bin file (raw little-endian uint16)")
    return TokenFile(path, BIN_DTYPE, 0, size // BIN_DTYPE.itemsize)
  except OSError as e:
    raise UserError(f"cannot read input {path!r}: {e.strerror or e}") from e
  except ValueError as e:
    raise UserError(f"input {path!r} is not a .npy file ({e}); pass a 1-D integer array saved with numpy.save") from e


def token_documents(tokens: TokenFile, separator_id: int, chunk: int = TOKEN_CHUNK) -> Iterator[Document]:
  """The separator-delimited pieces of a token file as int32 arrays, read `chunk` ids at a time.
  Separators are dropped; a trailing one ends the last document (nanoGPT writes one after every
  document); leading or doubled ones give empty documents (prepare skips them)."""
  pending: list[np.ndarray] = []
  index = 0
  left = tokens.count
  with open(tokens.path, "rb") as f:
    f.seek(tokens.offset)
    while left:
      n = min(chunk, left)
      data = f.read(n * tokens.dtype.itemsize)
      if len(data) != n * tokens.dtype.itemsize:
        raise UserError(f"input {tokens.path!r} ended early (it changed while prepare was reading it); run again")
      block = np.frombuffer(data, dtype=tokens.dtype)
      if tokens.dtype.itemsize >= 4 and len(block) and (int(block.max()) > _INT32.max or int(block.min()) < 0):
        bad = int(block.max()) if int(block.max()) > _INT32.max else int(block.min())
        raise UserError(f"input {tokens.path!r} holds token id {bad}, not an id of any vocabulary (ids are "
                        "0 .. 2^31-1); pass the token ids as they were written by the tokenizer")
      left -= n
      start = 0
      for cut in np.flatnonzero(block == separator_id).tolist():
        piece = block[start:cut]
        ids = np.concatenate(pending + [piece]) if pending else piece
        pending = []
        yield Document(f"{tokens.path}:{index}", None, ids.astype(np.int32))
        index += 1
        start = cut + 1
      if start < n:
        pending.append(block[start:])
  if pending:
    yield Document(f"{tokens.path}:{index}", None, np.concatenate(pending).astype(np.int32))
