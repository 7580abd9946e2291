"""`scone-jax export --format safetensors`: a baseline run's model.safetensors and config.json, read
with the safetensors library, give in plain numpy (Hugging Face Llama's definition, written here
independently of our model code) the logits our model gives, to 1e-4, also for an untied,
unscanned model with its own head width, RoPE base and eps; float16 / bfloat16 files hold the
float32 tensors rounded; a SCONE run's fgram_table.safetensors holds its store's rows and keys bit
for bit and its model.safetensors our parameters without A_f; every bad input is one line, exit 2,
nothing written."""
from __future__ import annotations

import json
import os
import struct

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from scone_jax.cli import main
from scone_jax.config import ModelConfig
from scone_jax.export import hf, layout as L
from scone_jax.models.transformer import build_model
from scone_jax.serve.store import open_store
from scone_jax.train.restore import load_run
from tests.helpers import TINY_STEPS

# A baseline trained and exported per module (~40 s of CPU): in `make test`, not in `make test-fast`.
pytestmark = pytest.mark.slow

PROMPT_LEN = 12


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, tiny_corpus) -> dict:
  """A tiny baseline (d 32, tied embeddings, scanned layers) trained TINY_STEPS steps on the tiny
  corpus, and its float32 safetensors export."""
  tmp = tmp_path_factory.mktemp("export_hf")
  workdir, out = str(tmp / "run"), str(tmp / "hf")
  assert main(["train", "--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", "--workdir", workdir,
               "--quiet", f"--gin.DATA_DIR='{tiny_corpus}'", f"--gin.TRAIN_STEPS={TINY_STEPS}",
               f"--gin.TrainConfig.checkpoint_every={TINY_STEPS}", "--gin.TrainConfig.log_every=1",
               "--gin.TrainConfig.eval_batches=1", "--gin.DataConfig.seq_len=32", "--gin.DataConfig.batch_size=8",
               "--gin.ModelConfig.d_model=32", "--gin.ModelConfig.d_ff=64", "--gin.TrainConfig.learning_rate=1e-2"]) == 0
  assert main(["export", "--format", "safetensors", "--workdir", workdir, "--out", out]) == 0
  return {"tmp": tmp, "workdir": workdir, "out": out, "loaded": load_run(workdir)}


# ---- Hugging Face LlamaForCausalLM in plain numpy (float64), from the files alone ----------------

def _rms(x, w, eps):
  return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rotate_half(x):
  half = x.shape[-1] // 2
  return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def llama_logits(w: dict, c: dict, ids: np.ndarray) -> np.ndarray:
  """[L, V] logits of LlamaForCausalLM (config c, tensors w) for one sequence at positions 0..L-1."""
  w = {name: value.astype(np.float64) for name, value in w.items()}
  n, kv, hd, eps = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["rms_norm_eps"]
  length = len(ids)
  inv_freq = 1.0 / c["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
  angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None]
  cos, sin = np.cos(np.concatenate([angles, angles], -1)), np.sin(np.concatenate([angles, angles], -1))
  causal = np.tril(np.ones((length, length), bool))
  x = w["model.embed_tokens.weight"][ids]
  for i in range(c["num_hidden_layers"]):
    p = f"model.layers.{i}."
    h = _rms(x, w[p + "input_layernorm.weight"], eps)
    q = (h @ w[p + "self_attn.q_proj.weight"].T).reshape(length, n, hd).transpose(1, 0, 2)
    k = (h @ w[p + "self_attn.k_proj.weight"].T).reshape(length, kv, hd).transpose(1, 0, 2)
    v = (h @ w[p + "self_attn.v_proj.weight"].T).reshape(length, kv, hd).transpose(1, 0, 2)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    k, v = np.repeat(k, n // kv, axis=0), np.repeat(v, n // kv, axis=0)   # repeat_kv
    scores = np.where(causal, q @ k.transpose(0, 2, 1) / np.sqrt(hd), -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    x = x + (probs @ v).transpose(1, 0, 2).reshape(length, n * hd) @ w[p + "self_attn.o_proj.weight"].T
    h = _rms(x, w[p + "post_attention_layernorm.weight"], eps)
    gate = h @ w[p + "mlp.gate_proj.weight"].T
    x = x + (gate / (1 + np.exp(-gate)) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
  x = _rms(x, w["model.norm.weight"], eps)
  head = w["model.embed_tokens.weight"] if c["tie_word_embeddings"] else w["lm_head.weight"]
  return x @ head.T


def _our_logits(model, ids: np.ndarray) -> np.ndarray:
  batch = {"inputs": ids[None].astype(np.int32), "positions": np.arange(len(ids), dtype=np.int32)[None],
           "segment_ids": np.ones((1, len(ids)), np.int32)}
  return np.asarray(model(batch))[0]


def _header(path: str) -> dict:
  with open(path, "rb") as f:
    size = struct.unpack("<Q", f.read(8))[0]
    return json.loads(f.read(size))


def test_baseline_export_is_llama_and_numpy_llama_gives_our_logits(baseline):
  out, loaded = baseline["out"], baseline["loaded"]
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  cfg = loaded.exp.model
  assert (config["architectures"], config["model_type"], config["torch_dtype"]) == (["LlamaForCausalLM"], "llama", "float32")
  assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"],
          config["num_key_value_heads"], config["head_dim"], config["intermediate_size"], config["vocab_size"]) == (
              32, 2, 4, 2, 8, 64, cfg.vocab_size)
  meta = loaded.exp.data_meta
  assert (config["bos_token_id"], config["eos_token_id"]) == (meta.bos_id, meta.eos_id)
  assert config["rms_norm_eps"] == cfg.norm_eps and config["rope_theta"] == cfg.rope_theta
  assert cfg.tie_embeddings and not config["tie_word_embeddings"]   # our tied logits are scaled: lm_head is its own
  tensors = load_file(os.path.join(out, "model.safetensors"))
  assert _header(os.path.join(out, "model.safetensors"))["__metadata__"]["format"] == "pt"
  assert len(tensors) == 2 + 9 * 2 + 1 and all(t.dtype == np.float32 for t in tensors.values())
  assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (2 * 8, 32)
  assert tensors["model.layers.0.mlp.down_proj.weight"].shape == (32, 64)
  ids = np.random.default_rng(0).integers(4, cfg.vocab_size, PROMPT_LEN)
  want = _our_logits(loaded.trainer.model(jax.device_get(loaded.params)), ids)
  got = llama_logits(tensors, config, ids)
  assert got.shape == (PROMPT_LEN, cfg.vocab_size)
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_untied_unscanned_llama_with_its_own_shapes_gives_our_logits():
  """The mapping itself on a model no run trained: untied lm_head, listed layers, head_dim set
  (not d / heads), one kv head, another RoPE base and eps, random norm scales."""
  cfg = ModelConfig(vocab_size=40, d_model=24, num_layers=3, num_heads=4, num_kv_heads=1, head_dim=10, d_ff=40,
                    tie_embeddings=False, scan_layers=False, rope_theta=500.0, norm_eps=1e-5, remat_policy="none")
  model = build_model(cfg, 3)
  params = nnx.to_pure_dict(nnx.split(model, nnx.Param)[1])
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda a: np.asarray(a) + rng.normal(0, 0.3, a.shape).astype(np.float32), params)
  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  config = json.loads(json.dumps(hf.llama_config(cfg, "float32", {})))
  ids = rng.integers(0, cfg.vocab_size, PROMPT_LEN)
  np.testing.assert_allclose(llama_logits(hf.llama_tensors(params, cfg), config, ids), _our_logits(model, ids),
                             atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_exports_hold_the_rounded_tensors(baseline, dtype):
  out = str(baseline["tmp"] / f"hf-{dtype}")
  assert main(["export", "--format", "safetensors", "--workdir", baseline["workdir"], "--out", out, "--dtype", dtype]) == 0
  full = load_file(os.path.join(baseline["out"], "model.safetensors"))
  path = os.path.join(out, "model.safetensors")
  header = _header(path)
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["torch_dtype"] == dtype
  with open(path, "rb") as f:
    raw = f.read()
  start = 8 + struct.unpack("<Q", raw[:8])[0]
  target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
  for name, value in full.items():
    entry = header[name]
    assert entry["dtype"] == {"float16": "F16", "bfloat16": "BF16"}[dtype] and entry["shape"] == list(value.shape)
    lo, hi = entry["data_offsets"]
    stored = np.frombuffer(raw[start + lo:start + hi], dtype=target).reshape(value.shape)
    np.testing.assert_array_equal(stored.view(np.uint16), value.astype(target).view(np.uint16))


def test_scone_export_holds_the_store_table_bit_for_bit(tmp_path, tiny_scone_run):
  workdir, store = tiny_scone_run["workdir"], tiny_scone_run["store"]
  out = str(tmp_path / "hf")
  assert main(["export", "--format", "safetensors", "--workdir", workdir, "--store", store, "--out", out]) == 0
  assert sorted(os.listdir(out)) == ["config.json", "fgram_table.safetensors", "model.safetensors"]
  table = load_file(os.path.join(out, "fgram_table.safetensors"))
  opened = open_store(store, "ram")
  assert table["embeddings"].dtype == np.float32 and table["embeddings"].shape == (150, 32)
  np.testing.assert_array_equal(table["embeddings"].view(np.uint32), opened.embeddings.view(np.uint32))
  assert table["fgram_tokens"].dtype == np.int32
  np.testing.assert_array_equal(table["fgram_tokens"], opened.fgram_tokens)
  assert set(table) == {"embeddings", "fgram_tokens"}
  metadata = _header(os.path.join(out, "fgram_table.safetensors"))["__metadata__"]
  with open(os.path.join(store, "zarr.json")) as f:
    attrs = json.load(f)["attributes"]
  assert (metadata["K"], metadata["S"], metadata["dtype"]) == ("3", "150", "float32")
  assert metadata["store_manifest_sha256"] == attrs[L.MANIFEST_SHA_ATTR]
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["llama_loadable"] is False and config["architectures"] == ["SconeJaxForCausalLM"]
  assert "not Llama-loadable" in config["note"] and config["scone_jax_model_config"]["embedding"] == "scone"
  model = load_file(os.path.join(out, "model.safetensors"))
  params = jax.device_get(load_run(workdir).params)
  assert not any("fgram_model" in name for name in model) and config["dropped_training_only"]
  np.testing.assert_array_equal(model["token_embed"], params["token_embed"])
  np.testing.assert_array_equal(model["decoder/blocks/attn/wq"], params["decoder"]["blocks"]["attn"]["wq"])


def _refused(capsys, argv: list[str], words: str) -> str:
  capsys.readouterr()
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and words in err, err
  return err


def _siblings(path) -> list[str]:
  return sorted(os.listdir(os.path.dirname(str(path))))


def test_bad_inputs_are_one_line_and_write_nothing(tmp_path, capsys, baseline, tiny_scone_run):
  base = ["export", "--format", "safetensors", "--workdir"]
  out = tmp_path / "out"
  _refused(capsys, base + [baseline["workdir"], "--out", "gs://bucket/model"], "local directory")
  _refused(capsys, base + [baseline["workdir"], "--out", str(out), "--store", tiny_scone_run["store"]], "drop --store")
  _refused(capsys, base + [tiny_scone_run["workdir"], "--out", str(out)], "--store")
  _refused(capsys, base + [baseline["workdir"], "--out", str(out), "--dtype", "int8"], "--dtype")
  _refused(capsys, ["export", "--workdir", tiny_scone_run["workdir"], "--out", str(out), "--store",
                    tiny_scone_run["store"]], "--format safetensors")
  assert _siblings(out) == []   # nothing written, no staging directory left behind
  # An existing non-empty --out: refused unless --restart, and --restart replaces only an export.
  other = tmp_path / "other"
  other.mkdir()
  (other / "notes.txt").write_text("mine")
  _refused(capsys, base + [baseline["workdir"], "--out", str(other)], "--restart")
  _refused(capsys, base + [baseline["workdir"], "--out", str(other), "--restart"], "not a safetensors export")
  assert os.listdir(other) == ["notes.txt"]
  previous = baseline["out"]
  before = {name: open(os.path.join(previous, name), "rb").read() for name in os.listdir(previous)}
  _refused(capsys, base + [baseline["workdir"], "--out", previous], "--restart")
  assert {name: open(os.path.join(previous, name), "rb").read() for name in os.listdir(previous)} == before
  _refused(capsys, base + [baseline["workdir"], "--out", os.path.join(baseline["workdir"], "hf")], "overlaps")
  assert _siblings(out) == ["other"]
  again = str(tmp_path / "again")
  assert main(base + [baseline["workdir"], "--out", again]) == 0
  assert main(base + [baseline["workdir"], "--out", again, "--restart"]) == 0
  assert _siblings(again) == ["again", "other"] and sorted(os.listdir(again)) == ["config.json", "model.safetensors"]


def test_only_the_baseline_architecture_is_called_a_llama():
  from types import SimpleNamespace

  from scone_jax.config import DataConfig
  from scone_jax.methods.token import Token

  def blockers(cfg):
    params = nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: build_model(cfg, 0)), nnx.Param)[1])   # paths only
    return hf.llama_blockers(SimpleNamespace(exp=SimpleNamespace(model=cfg, method=Token(cfg, DataConfig())),
                                             params=params))

  small = dict(vocab_size=20, d_model=16, num_layers=1, num_heads=2, num_kv_heads=1, d_ff=32)
  assert blockers(ModelConfig(**small)) == [] and blockers(ModelConfig(**small, scan_layers=False)) == []
  gpt2 = blockers(ModelConfig(**small, mlp="gelu", norm="layer", bias=True, positions="learned"))
  assert [b.split("=")[0] for b in gpt2] == ["ModelConfig.mlp", "ModelConfig.norm", "ModelConfig.positions",
                                             "ModelConfig.bias"]


def test_a_table_larger_than_the_memory_is_refused_before_reading(tmp_path, capsys, tiny_scone_run, monkeypatch):
  """The table file is written from memory: a table above the machine's available memory is one
  line naming its size and the zarr store's tiers, before any row is read or a file written."""
  from scone_jax.export import hf
  workdir, store = tiny_scone_run["workdir"], tiny_scone_run["store"]
  opened = open_store(store, "ram")
  table = opened.embeddings.nbytes   # the rows alone (the keys come on top): refused at one byte less
  monkeypatch.setattr(hf, "available_memory", lambda: table - 1)
  out = tmp_path / "out"
  err = _refused(capsys, ["export", "--format", "safetensors", "--workdir", workdir, "--store", store, "--out", str(out)],
                 "available; serve the zarr store")
  assert "generate --store" in err and f"--store {store!r}" in err
  assert _siblings(out) == []
  monkeypatch.setattr(hf, "available_memory", lambda: 10 * table)   # keys and rows fit: exported
  assert main(["export", "--format", "safetensors", "--workdir", workdir, "--store", store, "--out", str(out)]) == 0
