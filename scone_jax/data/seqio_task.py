"""seqio on both sides of `prepare`: a registered Task as a text source, and a prepared DATA
directory registered as a Task.

seqio imports TensorFlow (several seconds, and C++ log lines on stderr), so nothing here
imports it at module load: `import_seqio()` does, once, the first time seqio is really used.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import random
import re
import sys
import tempfile
from typing import Iterator

from array_record.python.array_record_module import ArrayRecordReader

from scone_jax.data import hf_tokenizer, shards, tokenizer as tokenizer_lib
from scone_jax.errors import UserError

TARGETS = "targets"
_seqio = None


@contextlib.contextmanager
def _quiet_stderr():
  """Hides what C++ writes to fd 2 while TensorFlow loads; replays it if the import fails."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as capture:
    os.dup2(capture.fileno(), 2)
    try:
      yield
    except BaseException:
      os.dup2(saved, 2)
      capture.seek(0)
      sys.stderr.write(capture.read().decode("utf-8", "replace"))
      raise
    finally:
      os.dup2(saved, 2)
      os.close(saved)


def installed() -> bool:
  """Whether the seqio extra is installed (without importing it and TensorFlow)."""
  if _seqio is not None:
    return True
  try:
    return importlib.util.find_spec("seqio") is not None
  except ValueError:   # sys.modules["seqio"] is None: marked missing
    return False


def import_seqio():
  """The seqio module, imported on first use (it brings TensorFlow)."""
  global _seqio
  if _seqio is None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
      with _quiet_stderr():
        import seqio
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")
    except ImportError as e:   # the base install has no TensorFlow: seqio is an extra
      raise UserError(f"seqio inputs and tasks need the seqio extra ({e.name or 'seqio'} is not installed): "
                      "pip install 'scone_jax[seqio]'") from e
    _seqio = seqio
  return _seqio


def import_modules(modules: list[str]) -> None:
  """Imports the modules named by --seqio_module (they register tasks when imported)."""
  if not modules:
    return
  import_seqio()
  for name in modules:
    try:
      importlib.import_module(name)
    except ImportError as e:
      raise UserError(f"--seqio_module {name!r} cannot be imported ({e}); check PYTHONPATH") from e


def default_task_name(data_dir: str) -> str:
  """`scone_jax_<basename of DATA>`, with characters seqio rejects replaced by `_`."""
  base = os.path.basename(os.path.normpath(os.path.abspath(data_dir)))
  return "scone_jax_" + re.sub(r"[^\w.:]", "_", base)


def _get_task(task_name: str):
  seqio = import_seqio()
  if task_name not in seqio.TaskRegistry.names():
    hint = ("it is a mixture; pass one of its tasks" if task_name in seqio.MixtureRegistry.names()
            else "register it first, e.g. with --seqio_module MODULE")
    raise UserError(f"--input seqio:{task_name}: no seqio Task of that name is registered; {hint}")
  return seqio.TaskRegistry.get(task_name)


def task_text_splits(task_name: str, feature: str, splits: list[str] | None) -> list[str]:
  """The splits of a registered Task to read (all of them unless `splits` names some)."""
  task = _get_task(task_name)
  available = list(task.splits)
  chosen = list(splits) if splits else available
  unknown = [s for s in chosen if s not in available]
  if unknown:
    raise UserError(f"seqio task {task_name!r} has no split {unknown[0]!r}; "
                    f"it has {', '.join(available)}")
  return chosen


def _text_dataset(task, split: str, feature: str):
  """The raw source's dataset if it carries `feature` as text, else the preprocessed one."""
  import tensorflow as tf
  candidates = [lambda: task.source.get_dataset(split=split, shuffle=False),
                lambda: task.get_dataset(sequence_length=None, split=split, shuffle=False,
                                         use_cached=False, num_epochs=1)]
  for make in candidates:
    dataset = make()
    spec = dataset.element_spec
    if isinstance(spec, dict) and feature in spec:
      if spec[feature].dtype != tf.string:
        raise UserError(f"seqio task {task.name!r}: feature {feature!r} is "
                        f"{spec[feature].dtype.name}, "
                        "not text; name a raw text feature with --seqio_feature")
      return dataset
  raise UserError(f"seqio task {task.name!r} has no feature {feature!r} in split {split!r}; "
                  "name its text feature with --seqio_feature")


def task_texts(task_name: str, split: str, feature: str) -> Iterator[str]:
  """Yields the text of `feature` for every example of one split, in the Task's order."""
  task = _get_task(task_name)
  for index, example in enumerate(_text_dataset(task, split, feature).as_numpy_iterator()):
    value = example[feature]
    try:
      yield value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError as e:
      raise UserError(f"seqio task {task_name!r} split {split!r} example {index}: "
                      f"feature {feature!r} is not UTF-8 text") from e


def _shard_dataset_fn(data_dir: str):
  """dataset_fn(split, shuffle_files, seed) over the ArrayRecord shards of DATA."""

  def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None):
    import tensorflow as tf
    paths = shards.shard_paths(data_dir, split)
    if shuffle_files:
      random.Random(seed).shuffle(paths)

    def documents():
      for path in paths:
        reader = ArrayRecordReader(path)
        try:
          count = reader.num_records()
          for start in range(0, count, 1024):
            for record in reader.read(list(range(start, min(count, start + 1024)))):
              yield {TARGETS: shards.decode_document(record)}
        finally:
          reader.close()

    return tf.data.Dataset.from_generator(
        documents, output_signature={TARGETS: tf.TensorSpec([None], tf.int32)})

  return dataset_fn


def register_prepared(data_dir: str, name: str | None = None) -> str:
  """Registers DATA (written by `prepare`) as a seqio Task and returns its name.

  Splits `train` and `validation` yield {"targets": int32[num_tokens]}: one document per
  example, exactly as stored (no EOS), in shard order. The output feature `targets` uses
  seqio.SentencePieceVocabulary(DATA/vocab.model), or for a Hugging Face DATA/tokenizer.json a
  seqio.Vocabulary over it (`hf_vocabulary`). Registering a name again replaces it.
  """
  meta = shards.load_meta(data_dir)
  kind, vocab_path = tokenizer_lib.data_tokenizer_file(data_dir)
  if not os.path.isfile(vocab_path):
    raise UserError(f"{vocab_path!r} does not exist: re-run `scone-jax prepare --out {data_dir}`")
  task_name = name or default_task_name(data_dir)
  if not re.fullmatch(r"[\w.:#]+", task_name):
    raise UserError(f"seqio task name {task_name!r} may only hold letters, digits, "
                    "'_', '.', ':', '#'")
  seqio = import_seqio()
  import tensorflow as tf
  source = seqio.FunctionDataSource(
      _shard_dataset_fn(os.path.abspath(data_dir)), splits=shards.SPLITS,
      num_input_examples=dict(meta.num_documents))
  if kind == hf_tokenizer.KIND:
    vocabulary = hf_vocabulary(os.path.abspath(vocab_path))
  else:
    vocabulary = seqio.SentencePieceVocabulary(os.path.abspath(vocab_path))
  seqio.TaskRegistry.remove(task_name)
  seqio.TaskRegistry.add(
      task_name, source=source,
      output_features={
          TARGETS: seqio.Feature(vocabulary=vocabulary, add_eos=False, dtype=tf.int32)})
  return task_name


_hf_vocabulary_class = None


def hf_vocabulary(path: str):
  """A seqio.Vocabulary over a Hugging Face tokenizer.json (hf_tokenizer.HFTokenizer: no specials
  added, specials in text are text, specials dropped in decoding); TF ops through numpy_function."""
  global _hf_vocabulary_class
  if _hf_vocabulary_class is None:
    _hf_vocabulary_class = _define_hf_vocabulary()
  return _hf_vocabulary_class(path)


def _define_hf_vocabulary():
  import numpy as np
  seqio = import_seqio()
  import tensorflow as tf

  class HuggingFaceVocabulary(seqio.Vocabulary):
    def __init__(self, path: str):
      self.path = path
      self.tokenizer = hf_tokenizer.HFTokenizer(path, flag="tokenizer.json")
      super().__init__(extra_ids=0)

    @property
    def eos_id(self):
      return self.tokenizer.special_ids["eos_id"]

    @property
    def bos_id(self):
      return self.tokenizer.special_ids["bos_id"]

    @property
    def unk_id(self):
      i = self.tokenizer.special_ids["unk_id"]
      return None if i < 0 else i

    @property
    def _base_vocab_size(self):
      return self.tokenizer.vocab_size

    def _encode(self, s):
      return self.tokenizer.encode(s)

    def _decode(self, ids):
      return self.tokenizer.decode([int(i) for i in ids])

    def _encode_tf(self, s):
      def encode(text):
        text = np.asarray(text).item()
        return np.asarray(self._encode(text.decode("utf-8") if isinstance(text, bytes) else text), np.int32)

      ids = tf.numpy_function(encode, [s], tf.int32)
      ids.set_shape([None])
      return ids

    def _decode_tf(self, ids):
      def decode(array):   # [..., n] ids -> [...] texts
        array = np.asarray(array)
        texts = [self._decode(row.tolist()).encode("utf-8") for row in array.reshape(-1, array.shape[-1])]
        return np.asarray(texts, dtype=object).reshape(array.shape[:-1])

      text = tf.numpy_function(decode, [ids], tf.string)
      text.set_shape(ids.shape[:-1])
      return text

    def __eq__(self, other):
      return isinstance(other, HuggingFaceVocabulary) and self.tokenizer.sha256 == other.tokenizer.sha256

    def __hash__(self):
      return hash(self.tokenizer.sha256)

  return HuggingFaceVocabulary
