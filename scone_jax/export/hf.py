"""`scone-jax export --format safetensors`: the main model (and SCONE's f-gram table) as safetensors.

OUT (a local directory, written into a temporary sibling and renamed into place when complete):
  model.safetensors        the main model's parameters (float32, or --dtype float16 / bfloat16)
  config.json              for the baseline architecture (embedding 'token', SwiGLU, RMSNorm, no
                           biases, RoPE) Hugging Face's LlamaForCausalLM config, and the tensors
                           carry its names; any other model keeps our names (the parameter path
                           "a/b/c", Flax layouts) and says that it is not Llama-loadable
  fgram_table.safetensors  SCONE only, from a finished store (`--store`): `embeddings` [S, d] as
                           stored, `scales` [S] for int8, `fgram_tokens` [S, K] int32 -1 padded

Llama mapping (docs/DESIGN.md, SAFETENSORS): HF matrices are [out, in], the transpose of our
kernels, with heads flattened head-major (q_proj row n*h + i = our wq[:, n, i]). Our RoPE is
already HF's rotate_half form with the same frequencies, so q and k need no permutation. Our tied
logits are h · T^T · d^-1/2, which HF's tied lm_head has no place for: lm_head.weight is written
as T · d^-1/2 and tie_word_embeddings is false.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np

from scone_jax.errors import UserError
from scone_jax.export import layout as L, manifest as M
from scone_jax.files import atomic_directory, human_bytes
from scone_jax.outputs import NAMES, artifact_kind
from scone_jax.train import identity as run_identity
from scone_jax.train.restore import LoadedRun, load_run, params_sha256

DTYPES = ("float32", "float16", "bfloat16")
MODEL_FILE, CONFIG_FILE, TABLE_FILE = "model.safetensors", "config.json", "fgram_table.safetensors"
MARKER = "scone_jax_export"   # config.json key of every export: what --restart may replace
NOT_LLAMA = ("not Llama-loadable: {why}; the tensors carry scone-jax's own parameter paths and Flax layouts "
             "(kernels [in, out], a leading layer axis when ModelConfig.scan_layers), read them with scone_jax")


def llama_blockers(run_: LoadedRun) -> list[str]:
  """Why the run's main model is not a LlamaForCausalLM ([] = it is one)."""
  cfg, method, why = run_.exp.model, run_.exp.method, []
  if method.input_embedding() is not None or method.ffn_up() is not None:
    why.append(f"{method.description} (ModelConfig.embedding={method.name!r}) has its own embedding or FFN "
               "tables; only the baseline is a Llama")
  for name, want in (("mlp", "swiglu"), ("norm", "rms"), ("positions", "rope"), ("bias", False)):
    if getattr(cfg, name) != want:
      why.append(f"ModelConfig.{name}={getattr(cfg, name)!r}")
  if not why:
    extra = sorted(set(_param_paths(run_.params, cfg)) - set(LLAMA_PARAMS) - {"unembed"})
    if extra:
      why.append(f"parameters outside the Llama layout ({', '.join(extra)})")
  return why


LLAMA_PARAMS = ("token_embed", "final_norm/scale", *(f"decoder/blocks/{name}" for name in (
    "attn/wq", "attn/wk", "attn/wv", "attn/wo", "attn_norm/scale", "mlp/w_gate", "mlp/w_up", "mlp/w_down",
    "mlp_norm/scale")))


def _param_paths(params: dict, cfg) -> list[str]:
  """Every parameter's path "a/b/c", the layer index of listed (unscanned) blocks left out."""
  paths = []
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    parts = [str(getattr(key, "key", key)) for key in path]
    if not cfg.scan_layers and parts[:2] == ["decoder", "blocks"] and len(parts) > 2 and parts[2].isdigit():
      del parts[2]
    paths.append("/".join(parts))
  return paths


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x), dtype=np.float32)


def _layers(blocks: dict, cfg) -> list[dict]:
  """One dict of numpy arrays per layer, from a scanned (stacked) or a listed block stack."""
  if cfg.scan_layers:
    return [jax.tree.map(lambda a, i=i: _np(a[i]), blocks) for i in range(cfg.num_layers)]
  return [jax.tree.map(_np, blocks[i] if i in blocks else blocks[str(i)]) for i in range(cfg.num_layers)]


def llama_tensors(params: dict, cfg) -> dict[str, np.ndarray]:
  """Our baseline's parameters under LlamaForCausalLM's names and layouts (float32)."""
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
  token = _np(params["token_embed"])
  out = {"model.embed_tokens.weight": token}
  for i, layer in enumerate(_layers(params["decoder"]["blocks"], cfg)):
    attn, mlp, pre = layer["attn"], layer["mlp"], f"model.layers.{i}."
    out[pre + "self_attn.q_proj.weight"] = attn["wq"].reshape(d, n * h).T
    out[pre + "self_attn.k_proj.weight"] = attn["wk"].reshape(d, k * h).T
    out[pre + "self_attn.v_proj.weight"] = attn["wv"].reshape(d, k * h).T
    out[pre + "self_attn.o_proj.weight"] = attn["wo"].reshape(n * h, d).T
    out[pre + "mlp.gate_proj.weight"] = mlp["w_gate"].T
    out[pre + "mlp.up_proj.weight"] = mlp["w_up"].T
    out[pre + "mlp.down_proj.weight"] = mlp["w_down"].T
    out[pre + "input_layernorm.weight"] = layer["attn_norm"]["scale"]
    out[pre + "post_attention_layernorm.weight"] = layer["mlp_norm"]["scale"]
  out["model.norm.weight"] = _np(params["final_norm"]["scale"])
  out["lm_head.weight"] = token * np.float32(d ** -0.5) if cfg.tie_embeddings else _np(params["unembed"]).T
  return out


def native_tensors(params: dict, drop: tuple[str, ...] = ()) -> tuple[dict[str, np.ndarray], list[str]]:
  """Every parameter under its path "a/b/c" (float32), leaving out paths with a component in
  `drop`; returns (tensors, the dropped paths)."""
  tensors, dropped = {}, []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    parts = [str(getattr(key, "key", key)) for key in path]
    if set(parts) & set(drop):
      dropped.append("/".join(parts))
    else:
      tensors["/".join(parts)] = _np(leaf)
  return tensors, sorted(dropped)


def _special_ids(run_: LoadedRun) -> dict:
  meta = run_.exp.data_meta
  ids = {"bos_token_id": meta.bos_id, "eos_token_id": meta.eos_id, "pad_token_id": meta.pad_id}
  return {key: (value if value is not None and value >= 0 else None) for key, value in ids.items()}


def llama_config(cfg, dtype: str, special_ids: dict) -> dict:
  """LlamaForCausalLM's config.json of a ModelConfig (llama_blockers empty)."""
  return {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": dtype,
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.resolved_head_dim, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta,
      "rope_scaling": None, "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
      "initializer_range": cfg.init_std, "pretraining_tp": 1, "use_cache": True,
      "tie_word_embeddings": False, **special_ids,
  }


def native_config(run_: LoadedRun, dtype: str, why: list[str], dropped: list[str]) -> dict:
  cfg = run_.exp.model
  return {
      "architectures": ["SconeJaxForCausalLM"], "model_type": "scone_jax", "torch_dtype": dtype,
      "llama_loadable": False, "note": NOT_LLAMA.format(why="; ".join(why)),
      "vocab_size": cfg.vocab_size, **_special_ids(run_), "scone_jax_model_config": dataclasses.asdict(cfg),
      "dropped_training_only": dropped,
  }


def _cast(tensors: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
  # numpy has no bfloat16: ml_dtypes' is what safetensors writes as BF16
  import ml_dtypes
  target = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
  return {name: np.ascontiguousarray(value.astype(target)) for name, value in tensors.items()}


def available_memory() -> int | None:
  """Bytes of memory this machine can give a new allocation without swapping (Linux's
  MemAvailable); None where it cannot be read."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError):
    return None


def fgram_table(store_url: str, run_: LoadedRun) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """A finished store's rows and keys, as stored. Read as serve/store.py's RAM tier reads them
  (that module is a stage above this one): a store of another checkpoint or f-gram file is
  refused, and every array must match its hash in the manifest."""
  kv = L.open_root(store_url)
  manifest = M.require(kv, store_url)
  M.check(manifest, M.identity_of(run_), store_url)
  lay = manifest.layout
  L.check_metadata(kv, store_url, lay)
  arrays = L.open_arrays(store_url, lay.arrays(), context=L.read_context(64 << 20), read_only=True)
  # safetensors writes a file from arrays in memory: the whole table is read before a byte is
  # written (at |V_f| = 1e9 and d = 2048 in float16, 4 TB). Refused up front when it cannot fit.
  need = sum(int(np.prod(a.shape)) * a.dtype.numpy_dtype.itemsize for a in arrays.values())
  have = available_memory()
  if have is not None and need > have:
    raise UserError(f"--store {store_url!r}: its f-gram table is {human_bytes(need)} and a safetensors file is "
                    f"written from memory, but this machine has {human_bytes(have)} available; serve the zarr "
                    "store itself (`generate --store`, tiers disk and remote) or export on a host with more memory")
  tensors = {}
  for name, array in arrays.items():
    if list(array.shape) != list(lay.metadata(name)["shape"]):
      raise UserError(f"store {store_url!r}: array {name!r} has shape {list(array.shape)}, not the manifest's")
    try:
      values = np.ascontiguousarray(L.wait(array.read(), store_url, f"reading {name}"))
    except ValueError as e:
      raise UserError(f"store {store_url!r}: a chunk of {name!r} could not be read; the store is corrupted: "
                      "re-export it with `scone-jax export --restart`") from e
    if name == "embeddings":
      values = L.as_rows(values, lay.dtype)
    if L.array_sha256(values, lay.rows_per_shard) != manifest.arrays.get(name):
      raise UserError(f"store {store_url!r}: array {name!r} does not match the hash in its manifest; "
                      "re-export with `scone-jax export --restart`")
    tensors[name] = values
  metadata = {"format": "scone_jax_fgram_table", "K": str(lay.max_n), "S": str(lay.num_rows), "d": str(lay.dim),
              "dtype": lay.dtype, "store_manifest_sha256": L.manifest_sha256(manifest.to_json()),
              "checkpoint_sha256": manifest.checkpoint_sha256, "fgrams_sha256": manifest.fgrams_sha256,
              "checkpoint_step": str(manifest.checkpoint_step), "vocab_size": str(manifest.vocab_size),
              "rows": "scales[:, None] * embeddings" if "scales" in tensors else "embeddings"}
  return tensors, metadata


def check_out(out: str, restart: bool, inputs: dict[str, str]) -> str:
  """The local output directory, or a one-line UserError: a URL, a path overlapping an input, a
  non-empty directory without --restart, or (with --restart) one that is not such an export."""
  local = out.removeprefix("file://")
  if "://" in local:
    raise UserError(f"--out {out!r} is a URL: --format safetensors writes a local directory; pass a path "
                    "(or drop --format safetensors for a zarr store)")
  target = os.path.realpath(local)
  for name, path in inputs.items():
    if not path or "://" in path:
      continue
    source = os.path.realpath(path)
    if target == source or target.startswith(source.rstrip(os.sep) + os.sep) or source.startswith(target + os.sep):
      raise UserError(f"--out {out!r} overlaps the input {name} {path!r}: pick an output outside the inputs")
  found = artifact_kind(local)
  if found == "file":
    raise UserError(f"--out {out!r} is a file; pass a directory path for the safetensors export")
  if found is not None:
    if not restart:
      raise UserError(f"--out {out!r} is not empty; pass --restart to replace it, or choose another path")
    if not _is_export(local):
      what = f"a {NAMES[found]}" if found in NAMES else "other files"
      raise UserError(f"--out {out!r} holds {what}, not a safetensors export: refusing to replace it; pass a new path")
  return local


def _is_export(path: str) -> bool:
  try:
    with open(os.path.join(path, CONFIG_FILE)) as f:
      return json.load(f).get(MARKER) == "safetensors"
  except (OSError, ValueError, AttributeError):
    return False


def export_safetensors(run_: LoadedRun, out: str, *, dtype: str = "float32", store: str | None = None) -> dict:
  """Writes OUT (module docstring) atomically; `out` was checked (check_out). Returns a summary."""
  if dtype not in DTYPES:
    raise UserError(f"--dtype {dtype} is not one of {', '.join(DTYPES)} for --format safetensors")
  scone = run_.exp.method.fgram_vocab is not None
  if store and not scone:
    raise UserError(f"--store: run {run_.workdir!r} is {run_.exp.method.description}: it has no f-gram table; "
                    "drop --store")
  if scone and not store:
    raise UserError(f"run {run_.workdir!r} is a SCONE run: pass --store STORE (run `scone-jax export --workdir "
                    "RUN --out STORE` first) so that its f-gram table is exported too")
  why = llama_blockers(run_)
  if why:
    tensors, dropped = native_tensors(run_.params, type(run_.exp.method).training_only if scone else ())
    config = native_config(run_, dtype, why, dropped)
  else:
    tensors, config = llama_tensors(run_.params, run_.exp.model), llama_config(run_.exp.model, dtype, _special_ids(run_))
  table = fgram_table(store, run_) if scone else None
  if table is not None:
    config["fgram_table"] = {"file": TABLE_FILE, **table[1]}
  config[MARKER] = "safetensors"
  config["scone_jax_checkpoint_step"] = run_.step
  config["scone_jax_checkpoint_sha256"] = params_sha256(run_.params)
  metadata = {"format": "pt" if not why else "scone_jax", "scone_jax_checkpoint_step": str(run_.step),
              "scone_jax_checkpoint_sha256": config["scone_jax_checkpoint_sha256"]}
  from safetensors.numpy import save_file
  with atomic_directory(out) as staging:
    save_file(_cast(tensors, dtype), os.path.join(staging, MODEL_FILE), metadata=metadata)
    if table is not None:
      save_file(table[0], os.path.join(staging, TABLE_FILE), metadata=table[1])
    with open(os.path.join(staging, CONFIG_FILE), "w") as f:
      json.dump(config, f, indent=2, sort_keys=True)
      f.write("\n")
    umask = os.umask(0)
    os.umask(umask)
    for name in os.listdir(staging):   # safetensors creates its files 0600
      os.chmod(os.path.join(staging, name), 0o666 & ~umask)
  return {"llama": not why, "tensors": len(tensors), "parameters": int(sum(t.size for t in tensors.values())),
          "table_rows": None if table is None else len(table[0]["embeddings"])}


def run(args) -> int:
  """`scone-jax export --format safetensors` (export/writer.py parses the flags)."""
  if args.num_processes not in (None, 1) or args.coordinator_address:
    raise UserError("--format safetensors runs as one process: drop --coordinator_address/--num_processes")
  if args.dtype not in DTYPES:
    raise UserError(f"--dtype {args.dtype} is not one of {', '.join(DTYPES)} for --format safetensors")
  if args.rows_per_shard or args.batch_rows or args.stop_after_blocks:
    raise UserError("--rows_per_shard, --batch_rows and --stop_after_blocks are zarr export flags: "
                    "drop them with --format safetensors")
  inputs = {"--workdir": args.workdir, **({"--store": args.store} if args.store else {})}
  out = check_out(args.out, args.restart, inputs)
  with run_identity.run_lock(args.workdir, shared=True):   # no training of this run meanwhile
    run_ = load_run(args.workdir, step=args.step, allow_other_data=args.allow_other_data)
    check_out(args.out, args.restart, {**inputs, **run_.exp.input_dirs()})
    summary = export_safetensors(run_, out, dtype=args.dtype, store=args.store)
  kind = "a LlamaForCausalLM" if summary["llama"] else "scone-jax's own layout (not Llama-loadable)"
  table = f" + {summary['table_rows']:,} f-gram rows" if summary["table_rows"] is not None else ""
  print(f"exported {summary['parameters']:,} parameters ({args.dtype}) as {kind}{table} to {out}")
  return 0
