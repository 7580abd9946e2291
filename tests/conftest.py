"""Test setup: 8 fake CPU devices for mesh tests (must be set before JAX is imported)."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=1200 "
                      "--xla_cpu_collective_call_warn_stuck_timeout_seconds=300 --xla_cpu_collective_timeout_seconds=1200")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import gin  # noqa: E402
import pytest  # noqa: E402

from tests.helpers import TINY_FGRAMS, TINY_ROWS_PER_SHARD, TINY_STEPS, WORDS  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_gin():
  """Gin bindings are global: a test that builds configs directly must not see another's."""
  gin.clear_config()
  yield
  gin.clear_config()


# ---- suite-wide fixtures: one tiny corpus, its f-grams, one trained tiny SCONE run and its store ----
# Built once per test session and shared by every xdist worker (a directory beside the workers'
# base temp dirs, guarded by an flock): the export, serve and eval tests read them and write
# their own outputs elsewhere.

def _shared(tmp_path_factory, name: str, build) -> str:
  """The directory `name` of this session, built by `build(path)` in whichever worker comes first."""
  import fcntl
  import shutil
  base = tmp_path_factory.getbasetemp()
  root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
  path = root / f"shared-{name}"
  with open(root / f"shared-{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not (path / ".complete").exists():
      shutil.rmtree(path, ignore_errors=True)
      path.mkdir()
      build(str(path))
      (path / ".complete").write_text("")
  return str(path)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> str:
  """DATA prepared by `scone-jax prepare` from a jsonl corpus of short sentences (a real
  SentencePiece tokenizer, vocabulary 300, 10% validation)."""
  def build(path):
    import json

    import numpy as np

    from scone_jax.cli import main
    rng = np.random.default_rng(0)
    with open(os.path.join(path, "corpus.jsonl"), "w") as f:
      for _ in range(400):
        sentences = [" ".join(rng.choice(WORDS[k]) for k in ("subject", "verb", "object")) + "."
                     for _ in range(rng.integers(2, 7))]
        f.write(json.dumps({"text": " ".join(sentences)}) + "\n")
    assert main(["prepare", "--input", os.path.join(path, "corpus.jsonl"), "--out", os.path.join(path, "data"),
                 "--vocab_size", "300", "--validation_fraction", "0.1"]) == 0
  return os.path.join(_shared(tmp_path_factory, "corpus", build), "data")


@pytest.fixture(scope="session")
def tiny_fgrams(tmp_path_factory, tiny_corpus) -> str:
  """FG of the tiny corpus: K = 3, the TINY_FGRAMS most frequent f-grams with count >= 2."""
  def build(path):
    from scone_jax.cli import main
    assert main(["fgrams", "build", "--data", tiny_corpus, "--max_n", "3", "--size", str(TINY_FGRAMS),
                 "--min_count", "2", "--out", os.path.join(path, "fg")]) == 0
  return os.path.join(_shared(tmp_path_factory, "fgrams", build), "fg")


@pytest.fixture(scope="session")
def tiny_scone_run(tmp_path_factory, tiny_corpus, tiny_fgrams) -> dict:
  """A tiny SCONE model (d 32, A_f 1 block) trained TINY_STEPS steps on the (data 2, fsdp 2,
  tensor 2) mesh, and its float32 store: {"data", "fgrams", "workdir", "store"} (read-only)."""
  def build(path):
    from scone_jax.cli import main
    assert main(["train", "--gin_file", "models/tiny.gin", "--gin_file", "methods/scone.gin",
                 "--gin_file", "runs/cpu_mesh8.gin", "--workdir", os.path.join(path, "run"), "--quiet",
                 f"--gin.DATA_DIR='{tiny_corpus}'", f"--gin.FGRAM_DIR='{tiny_fgrams}'",
                 f"--gin.TRAIN_STEPS={TINY_STEPS}", "--gin.TrainConfig.checkpoint_every=2",
                 "--gin.TrainConfig.log_every=1", "--gin.TrainConfig.eval_batches=1", "--gin.DataConfig.seq_len=32",
                 "--gin.DataConfig.batch_size=8", "--gin.ModelConfig.d_model=32", "--gin.ModelConfig.d_ff=64",
                 "--gin.TrainConfig.learning_rate=1e-2"]) == 0
    assert main(["export", "--dtype", "float32", "--workdir", os.path.join(path, "run"), "--out", os.path.join(path, "store"),
                 "--rows_per_shard", str(TINY_ROWS_PER_SHARD)]) == 0
  path = _shared(tmp_path_factory, "scone-run", build)
  return {"data": tiny_corpus, "fgrams": tiny_fgrams, "workdir": os.path.join(path, "run"),
          "store": os.path.join(path, "store")}
