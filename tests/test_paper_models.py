"""The SCONE paper's architectures (docs/METHODS.md 1.6): the ten paper model files build to the
paper's parameter counts, the A_f files are the paper's 711M / 1920M configurations without their
token table, the accounting counts what the model holds, `scone-jax describe` prints it; and the
block options (GELU MLP, LayerNorm, biases, learned positions) on a tiny model: a numpy
reference, positions that matter, KV-cache decoding, and the default form unchanged.

Every count here is read from the built model's abstract parameter tree (nnx.eval_shape: shapes
only, nothing initialised), never from a formula, so the accounting code is checked against it."""
from __future__ import annotations

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from scone_jax import cli
from scone_jax.config import EXPERIMENTS_DIR, DataConfig, ModelConfig
from scone_jax.errors import UserError
from scone_jax.methods.base import TokenFeatures
from scone_jax.methods.scone import FgramConfig, FgramModel
from scone_jax.methods.stem import Stem
from scone_jax.models import accounting, build_model
from scone_jax.serve.decode import Decoder
from scone_jax.train import aot
from tests.helpers import stepwise_logits
from tests.reference import np_forward, np_params

# The paper's parameter counts (d_model/ffw/layers; issue 12's table).
PAPER = {
    "models/paper_olmo_d2048_l12.gin": 711e6,
    "models/paper_olmo_d2048_l18.gin": 1014e6,
    "models/paper_olmo_d2048_l24.gin": 1316e6,
    "models/paper_olmo_d2048_l36.gin": 1920e6,
    "models/paper_webtext_d1024_l6.gin": 128e6,
    "models/paper_webtext_d1024_l12.gin": 204e6,
    "models/paper_webtext_d1536_l12.gin": 419e6,
    "models/paper_webtext_d1536_l18.gin": 589e6,
    "models/paper_webtext_d1536_l24.gin": 759e6,
    "models/paper_webtext_d1536_l36.gin": 1099e6,
}


def _run_file(model_file: str) -> str:
  return "runs/v5p_256_seq1024.gin" if "webtext" in model_file else "runs/v5p_256.gin"


def _built(files: list[str], bindings: tuple[str, ...] = ()):
  """(experiment, its model built abstractly, that model's nnx.State of Params), as `compile` loads it."""
  exp = aot.load_experiment(files, list(bindings))
  model = nnx.eval_shape(exp.build_model)
  return exp, model, nnx.state(model, nnx.Param)


def _size(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def _header_count(gin_file: str, label: str) -> int:
  """The parameter count a file's header comment states ("Built: N parameters", "A_f N parameters")."""
  with open(f"{EXPERIMENTS_DIR}/{gin_file}") as f:
    m = re.search(rf"{label} ([\d,]+) parameters", f.read())
  assert m, f"{gin_file} does not state its built count ('{label} N parameters')"
  return int(m.group(1).replace(",", ""))


@pytest.mark.parametrize("model_file", sorted(PAPER))
def test_paper_model_files_have_the_papers_parameter_counts(model_file):
  exp, model, params = _built([model_file, _run_file(model_file)])
  cfg = exp.model
  assert (cfg.mlp, cfg.norm, cfg.bias, cfg.positions, cfg.tie_embeddings) == ("gelu", "layer", True, "learned", True)
  assert cfg.d_ff == 4 * cfg.d_model and cfg.max_seq_len == (2048 if "olmo" in model_file else 1024)
  n = _size(params)
  assert abs(n / PAPER[model_file] - 1) < 0.005, (model_file, n)
  assert n == _header_count(model_file, "Built:")
  # The parts of the paper's form, as built: two FFN matrices, a table of max_seq_len positions.
  assert model.decoder.blocks.mlp.w_gate is None and model.pos_embed.shape == (cfg.max_seq_len, cfg.d_model)
  # The accounting counts exactly what the model holds (all resident: no method here).
  acct = exp.accounting(params)
  assert (acct.resident_params, acct.training_params, acct.offloaded_entries) == (n, 0, 0)


@pytest.mark.parametrize("model_file", ["models/olmo_d2048_l18.gin", "models/webtext_d1536_l12.gin"])
def test_our_swiglu_files_say_they_are_not_the_papers(model_file):
  _, _, params = _built([model_file, "runs/v5p_256.gin"])
  with open(f"{EXPERIMENTS_DIR}/{model_file}") as f:
    assert f.read().startswith("# Ours, not the paper's")
  assert _size(params) == _header_count(model_file, "Built:")


def _block_params(model) -> int:
  """Parameters of one block of a built main model (its stacked blocks / layers)."""
  return _size(nnx.state(model.decoder.blocks, nnx.Param)) // model.cfg.num_layers


@pytest.mark.parametrize("method_file,layers,paper_config,size", [
    ("methods/scone_af06b.gin", 12, "models/paper_olmo_d2048_l12.gin", 10_000_000),
    ("methods/scone_af18b.gin", 36, "models/paper_olmo_d2048_l36.gin", 10_000_000),
    ("methods/scone_af18b_fg1b.gin", 36, "models/paper_olmo_d2048_l36.gin", 1_000_000_000),
])
def test_olmo_af_files_are_the_papers_configs_without_token_embeddings(method_file, layers, paper_config, size):
  exp, model, params = _built(["models/paper_olmo_d2048_l18.gin", method_file, "runs/v5p_256.gin"])
  af = model.input_embedding.fgram_model
  af_params = _size(nnx.state(af, nnx.Param))
  assert (af.cfg.num_layers, af.cfg.mlp, af.cfg.norm, af.cfg.bias, af.cfg.positions) == (layers, "gelu", "layer", True,
                                                                                          "learned")
  # The paper's 711M / 1920M model less its token table and its 2048-row position table, plus
  # A_f's own K-row position table: the same blocks and final LayerNorm.
  _, paper_model, paper_params = _built([paper_config, "runs/v5p_256.gin"])
  without_tables = _size(paper_params) - paper_model.token_embed.size - paper_model.pos_embed.size
  assert af_params == without_tables + af.positions.size
  assert af_params == layers * _block_params(model) + af.positions.size + _size(nnx.state(af.final_norm, nnx.Param))
  assert abs(af_params / (0.6e9 if layers == 12 else 1.8e9) - 1) < 0.01
  assert af_params == _header_count(method_file.replace("_fg1b", ""), "A_f")
  acct = exp.accounting(nnx.split(model, nnx.Param)[1])
  assert acct.training_params == af_params and acct.resident_params == _size(params) - af_params
  assert acct.offloaded_entries == size * 2048 and exp.method.max_n == 5


@pytest.mark.parametrize("method_file,layers,size", [
    ("methods/scone_webtext_fg512k.gin", 12, 524_288), ("methods/scone_webtext_fg10m.gin", 12, 10_000_000),
    ("methods/scone_webtext_fg100m.gin", 12, 100_000_000), ("methods/scone_webtext_af05x.gin", 6, 10_000_000),
    ("methods/scone_webtext_af3x.gin", 36, 10_000_000),
])
def test_webtext_scone_files(method_file, layers, size):
  exp, model, params = _built(["models/paper_webtext_d1536_l12.gin", method_file, "runs/v5p_256_seq1024.gin"])
  af = model.input_embedding.fgram_model
  af_params = _size(nnx.state(af, nnx.Param))
  assert layers == af.cfg.num_layers == {6: 0.5, 12: 1, 36: 3}[layers] * model.cfg.num_layers
  assert af_params == _header_count(method_file, "A_f")
  acct = exp.accounting(nnx.split(model, nnx.Param)[1])
  assert (acct.training_params, acct.offloaded_entries) == (af_params, size * 1536)
  assert exp.method.num_fgrams == size and exp.data.seq_len == 1024


# ---- the block options on a tiny model ---------------------------------------------------------------

GPT2 = dict(mlp="gelu", norm="layer", bias=True, positions="learned")
VOCAB = 40


def _tiny(scan: bool = True, **options) -> ModelConfig:
  return ModelConfig(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64, max_seq_len=24,
                     remat_policy="none", scan_layers=scan, **options)


def _randomised(model, seed: int):
  """Every parameter redrawn at O(1) scale (biases and norm parameters far from 0 and 1), so a
  misplaced bias, norm or position row shows in the outputs."""
  state = nnx.state(model, nnx.Param)
  rng = np.random.default_rng(seed)
  pure = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape) * (0.3 if x.ndim <= 3 else 0.2), jnp.float32),
                      nnx.to_pure_dict(state))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model


def _batch():
  """Two rows: row 0 two segments (7 + 5 tokens), row 1 one segment and padding."""
  rng = np.random.default_rng(0)
  return {"inputs": rng.integers(0, VOCAB, (2, 12)).astype(np.int32),
          "segment_ids": np.array([[1] * 7 + [2] * 5, [1] * 10 + [0] * 2], np.int32),
          "positions": np.array([list(range(7)) + list(range(5)), list(range(10)) + [0, 0]], np.int32)}


def test_gpt2_form_has_its_parameters_with_axes_and_decay():
  model = build_model(_tiny(**GPT2), 0)
  flat = {"/".join(map(str, path)): v for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert not any("w_gate" in k for k in flat)
  for name, shape in {"decoder/blocks/attn/bq": (2, 4, 8), "decoder/blocks/attn/bk": (2, 2, 8),
                      "decoder/blocks/attn/bo": (2, 32), "decoder/blocks/mlp/b_up": (2, 64),
                      "decoder/blocks/mlp/b_down": (2, 32), "decoder/blocks/attn_norm/bias": (2, 32),
                      "final_norm/bias": (32,), "pos_embed": (24, 32)}.items():
    assert flat[name].shape == shape, name
  for name, v in flat.items():
    meta = v.get_metadata()
    assert len(meta["logical_axes"]) == len(v.shape), name
    leaf = name.split("/")[-1]
    no_decay = leaf in ("scale", "bias") or re.fullmatch(r"b[qkvo]|b_\w+", leaf)
    assert meta["weight_decay"] == (not no_decay), name   # matrices and both tables decay
  # Biases start at zero, LayerNorms at scale 1 / bias 0.
  assert float(jnp.abs(model.decoder.blocks.attn.bq[...]).max()) == 0.0
  assert float(jnp.abs(model.final_norm.bias[...]).max()) == 0.0 and float(model.final_norm.scale[...].min()) == 1.0


@pytest.mark.parametrize("options", [dict(mlp="gelu"), dict(norm="layer"), dict(bias=True), dict(positions="learned"),
                                     GPT2], ids=["gelu", "layer", "bias", "learned", "gpt2"])
def test_each_option_runs_and_equals_the_numpy_reference(options):
  cfg = _tiny(**options)
  model = _randomised(build_model(cfg, 0), 1)
  batch = _batch()
  logits = np.asarray(model(batch))
  assert np.isfinite(logits).all()
  params = np_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  for b, n in ((0, 12), (1, 10)):
    want, _ = np_forward(params, cfg, batch["inputs"][b, :n], positions_L=batch["positions"][b, :n],
                         segment_ids_L=batch["segment_ids"][b, :n])
    np.testing.assert_allclose(logits[b, :n], want, rtol=1e-4, atol=1e-4)


def test_learned_positions_change_the_output_when_positions_change():
  cfg = _tiny(**GPT2)
  model = _randomised(build_model(cfg, 0), 2)
  batch = _batch()
  shifted = {**batch, "positions": batch["positions"] + 3}
  assert not np.allclose(np.asarray(model(batch)), np.asarray(model(shifted)), atol=1e-3)
  # Only through the table: with its rows all equal, the shift changes nothing (no RoPE left).
  model.pos_embed[...] = jnp.broadcast_to(model.pos_embed[...][:1], model.pos_embed.shape)
  np.testing.assert_allclose(np.asarray(model(batch)), np.asarray(model(shifted)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scan", [True, False])
def test_gpt2_form_stepwise_decode_equals_full_forward(scan):
  """Prefill + one token a step with the KV cache (the new token's position is the cache's
  length: its absolute row of the table) equals the training forward pass."""
  cfg = _tiny(scan, **GPT2)
  model = _randomised(build_model(cfg, 1), 3)
  graphdef, params = nnx.split(model)
  decoder = Decoder(lambda p: nnx.merge(graphdef, p), params, cfg, TokenFeatures())
  rng = np.random.default_rng(1)
  seqs = [rng.integers(4, VOCAB, n).astype(np.int32) for n in (10, 6, 13)]
  got = stepwise_logits(decoder, seqs, [4, 2, 5], 9)
  width = max(len(s) for s in seqs) + 1
  x, segments = np.zeros((3, width), np.int32), np.zeros((3, width), np.int32)
  for i, s in enumerate(seqs):
    x[i, :len(s) + 1], segments[i, :len(s) + 1] = np.concatenate([[2], s]), 1
  batch = {"inputs": x, "positions": np.tile(np.arange(width, dtype=np.int32), (3, 1)), "segment_ids": segments}
  full = np.asarray(jax.jit(lambda st, b: nnx.merge(graphdef, st)(b))(params, batch))
  for (row, p), logits in got.items():
    np.testing.assert_allclose(logits, full[row, p], rtol=1e-4, atol=1e-4)
  assert len(got) == sum(len(s) + 2 - p for s, p in zip(seqs, [4, 2, 5]))


def test_af_honours_the_block_options():
  """A_f builds the main design (no W_gate, biases, LayerNorms, no RoPE in its blocks); its
  per-f-gram and packed paths agree."""
  main = _tiny(**GPT2)
  af = FgramModel(main, FgramConfig(num_layers=2), 3, nnx.Rngs(params=0))
  af = _randomised(af, 4)
  assert af.blocks.blocks.mlp.w_gate is None and af.blocks.blocks.attn.bq is not None
  assert af.final_norm.bias is not None and not af.blocks.blocks.attn.rope
  emb = jax.random.normal(jax.random.key(1), (4, 3, 32))
  lengths = jnp.array([2, 3, 2, 3])
  out = np.asarray(af(emb, lengths))
  # Packed: the four f-grams' slots in one row, each slot attending to its own f-gram's earlier
  # slots (fgram/packing.tree_mask): chains 0-1, 2-3-4, 5-6, 7-8-9.
  row = jnp.concatenate([emb[i, :n] for i, n in enumerate([2, 3, 2, 3])])[None]
  positions = jnp.array([[0, 1, 0, 1, 2, 0, 1, 0, 1, 2]])
  spans = jnp.array([[2, 2, 5, 5, 5, 7, 7, 10, 10, 10]])
  packed = np.asarray(af.packed(row, positions, spans, jnp.array([[1, 4, 6, 9]])))
  np.testing.assert_allclose(packed, out, rtol=1e-5, atol=1e-5)


# Recorded from the code before the block options existed (the same configuration, seed and
# batch): the default form builds the same parameters and gives the same outputs.
GOLDEN = {
    True: (11, 132.90050404070985, 1523.4980904917984, 107.5694182915613,
           [1.0945501327514648, 5.804764747619629, 1.3322399854660034, -0.8650743365287781],
           [2.138352155685425, 0.011918412521481514, -0.34762290120124817]),
    False: (20, 137.7761752236546, 1523.473013674118, 107.54735750798136,
            [1.0985743999481201, 5.8047614097595215, 1.3340966701507568, -0.8659266829490662],
            [2.1393496990203857, 0.009246828965842724, -0.3504171669483185]),
}
GOLDEN_AF = (-1.739009516313672, [0.5179837346076965, -0.9872352480888367, 0.85206538438797, -1.1788372993469238])


@pytest.mark.parametrize("scan", [True, False])
def test_default_form_is_unchanged(scan):
  cfg = ModelConfig(vocab_size=40, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                    remat_policy="none", scan_layers=scan)
  assert (cfg.mlp, cfg.norm, cfg.bias, cfg.positions) == ("swiglu", "rms", False, "rope")
  model = build_model(cfg, 3)
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  count, total, squares, logits_sum, row0, row1 = GOLDEN[scan]
  assert len(leaves) == count
  np.testing.assert_allclose(sum(np.asarray(x, np.float64).sum() for x in leaves), total, rtol=1e-9)
  np.testing.assert_allclose(sum((np.asarray(x, np.float64) ** 2).sum() for x in leaves), squares, rtol=1e-9)
  out = np.asarray(model(_batch()))
  np.testing.assert_allclose(out.astype(np.float64).sum(), logits_sum, rtol=1e-5)
  np.testing.assert_allclose(out[0, 5, :4], row0, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[1, 9, :3], row1, rtol=1e-5, atol=1e-6)
  if scan:
    af = FgramModel(cfg, FgramConfig(num_layers=2), 3, nnx.Rngs(params=5))
    emb = jax.random.normal(jax.random.key(1), (4, 3, 32))
    o = np.asarray(af(emb, jnp.array([2, 3, 2, 3])))
    np.testing.assert_allclose(o.astype(np.float64).sum(), GOLDEN_AF[0], rtol=1e-5)
    np.testing.assert_allclose(o[1, :4], GOLDEN_AF[1], rtol=1e-5, atol=1e-6)


def test_gelu_flops_count_two_matrices_and_positions_none():
  """Per token, a multiply-add 2: per layer 2 (d h (2 n_q + 2 n_kv) + 2 d d_ff) + 4 c n_q h (the
  GELU FFN has two matrices; biases, norms and the position lookup add no matmul FLOPs), plus
  the output layer 2 d |V|. d 32, h 8, n_q 4, n_kv 2, d_ff 64, c 12, |V| 40:
  2 (3,072 + 4,096) + 4 * 12 * 32 = 15,872 per layer; 2 layers + 2,560 = 34,304."""
  cfg = _tiny(**GPT2)
  assert accounting.main_model_flops(cfg, 12) == 34_304
  # SwiGLU at the same shape: 2 (3,072 + 6,144) + 1,536 = 19,968 per layer; 2 layers + 2,560.
  assert accounting.main_model_flops(_tiny(), 12) == 42_496


@pytest.mark.parametrize("field,value", [("mlp", "relu"), ("norm", "batch"), ("positions", "alibi")])
def test_bad_block_options_are_one_line_errors(field, value):
  with pytest.raises(UserError, match=f"ModelConfig.{field}='{value}' is not one of") as e:
    _tiny(**{field: value}).validate()
  assert "\n" not in str(e.value)


def test_stem_refuses_the_gpt2_ffn():
  with pytest.raises(UserError, match="SwiGLU"):
    Stem.resolve(_tiny(**GPT2), DataConfig(), None)


# ---- scone-jax describe ---------------------------------------------------------------------------

def test_describe_prints_the_accounting_of_a_paper_file(capsys):
  rc = cli.main(["describe", "--gin_file", "models/paper_webtext_d1024_l6.gin"])
  out = capsys.readouterr()
  assert rc == 0, out.err
  got = json.loads(out.out)
  _, _, params = _built(["models/paper_webtext_d1024_l6.gin"])
  n = _size(params)
  assert got["accounting"]["resident_params"] == got["main_params"] == got["total_params"] == n
  assert got["accounting"]["training_params"] == got["accounting"]["offloaded_entries"] == 0
  assert got["model"]["mlp"] == "gelu" and got["method"] == {"name": "token"}


def test_describe_scone_without_data_on_a_slice(capsys):
  files = ["models/paper_webtext_d1536_l12.gin", "methods/scone_webtext_fg512k.gin", "runs/v5p_256_seq1024.gin"]
  rc = cli.main(["describe", *(a for f in files for a in ("--gin_file", f)), "--topology", "v5p-256"])
  got = json.loads(capsys.readouterr().out)
  exp, model, params = _built(files)
  af = _size(nnx.state(model.input_embedding.fgram_model, nnx.Param))
  acct = got["accounting"]
  assert rc == 0 and (got["hosts"], got["batch_devices"], got["seq_len"]) == (32, 128, 1024)
  assert (acct["training_params"], acct["resident_params"], got["total_params"]) == (af, _size(params) - af,
                                                                                     _size(params))
  assert acct["offloaded_entries"] == 524_288 * 1536 and got["main_params"] == _size(params) - af
  assert got["method"]["num_fgrams"] == 524_288 and got["method"]["fgram_layers"] == 12
  # What `compile` prints for this slice: the accounting at 32 hosts and 128 batch devices.
  assert acct == exp.accounting(nnx.split(model, nnx.Param)[1], 32, 128).as_dict()


@pytest.mark.parametrize("argv,needle", [
    (["--gin_file", "models/no_such_model.gin"], "does not exist"),
    (["--gin_file", "models/paper_webtext_d1024_l6.gin", "--gin.ModelConfig.no_such_field=1"], "no_such_field"),
    (["--gin_file", "models/paper_webtext_d1024_l6.gin", "--gin.ModelConfig.mlp='relu'"], "mlp"),
])
def test_describe_bad_input_is_one_line(argv, needle, capsys):
  rc = cli.main(["describe", *argv])
  out = capsys.readouterr()
  assert rc == 2 and out.out == "" and len(out.err.strip().splitlines()) == 1 and needle in out.err, out.err
