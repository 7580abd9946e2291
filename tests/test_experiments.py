"""Every gin file under experiments/ parses and builds (configs + abstract model) in every
model x method overlay x run combination that makes sense, the three kinds bind disjoint
configurables (so the composition order of experiments/README.md cannot change a value), and gin
mistakes are one-line errors."""
from __future__ import annotations

import glob
import os
import re

import jax
import pytest
from flax import nnx

from scone_jax import experiment
from scone_jax.cli import main
from scone_jax.config import EXPERIMENTS_DIR
from scone_jax.fgram.build import build
from tests.helpers import make_data


def _files(kind: str) -> list[str]:
  return sorted(os.path.relpath(p, EXPERIMENTS_DIR) for p in glob.glob(f"{EXPERIMENTS_DIR}/{kind}/*.gin"))


GIN_FILES = sorted(os.path.relpath(p, EXPERIMENTS_DIR) for p in glob.glob(f"{EXPERIMENTS_DIR}/**/*.gin", recursive=True))
INCLUDE = re.compile(r"^include\s+'([^']+)'", re.M)
BINDING = re.compile(r"^([A-Za-z_][\w.]*)\s*=", re.M)


def _text(gin_file: str) -> str:
  """The file's text with its includes, recursively (includes first, as gin reads them)."""
  with open(os.path.join(EXPERIMENTS_DIR, gin_file)) as f:
    text = f.read()
  return "".join(_text(inc) for inc in INCLUDE.findall(text)) + text


def _includes(gin_file: str) -> set[str]:
  with open(os.path.join(EXPERIMENTS_DIR, gin_file)) as f:
    direct = set(INCLUDE.findall(f.read()))
  return direct.union(*(_includes(inc) for inc in direct)) if direct else set()


# `*_base.gin` files are shared settings, included by others and not used alone.
BASES = {f for f in GIN_FILES if f.endswith("_base.gin")}
MODELS = [f for f in _files("models") if f not in BASES]
METHODS = [f for f in _files("methods") if f not in BASES]
RUNS = [f for f in _files("runs") if f not in BASES]
# Paper-size models (vocabulary 50304) go with the pod runs of their sequence length (2048; 1024 for
# the paper's WebText models, whose position table has 1024 rows); the rest with the CPU runs.
POD_BASES = {"models/olmo_base.gin", "models/webtext_base.gin", "models/paper_olmo_base.gin",
             "models/paper_webtext_base.gin"}
POD_MODELS = [m for m in MODELS if _includes(m) & POD_BASES]
CPU_MODELS = [m for m in MODELS if m not in POD_MODELS]
POD_RUNS = [r for r in RUNS if "runs/pod_base.gin" in _includes(r)]
CPU_RUNS = [r for r in RUNS if "runs/cpu_base.gin" in _includes(r)]
# Method overlays sized for one main model (paper-size A_f, tables scaled to d and |V|); every other
# overlay goes on every model.
PAPER_WEBTEXT_L12 = ["models/paper_webtext_d1536_l12.gin", "models/paper_webtext_d1024_l12.gin"]
SIZED_METHODS = {
    "methods/scone_af06b.gin": ["models/paper_olmo_d2048_l18.gin"],
    "methods/scone_af18b.gin": ["models/paper_olmo_d2048_l18.gin"],
    "methods/scone_af06b_fg1b.gin": ["models/paper_olmo_d2048_l18.gin"],
    "methods/scone_af18b_fg1b.gin": ["models/paper_olmo_d2048_l18.gin"],
    **{f"methods/scone_webtext_{v}.gin": PAPER_WEBTEXT_L12 for v in ("fg512k", "fg10m", "fg100m", "af05x", "af3x")},
    "methods/ngram_n4k4.gin": ["models/olmo_d2048_l18.gin"],
}
GENERIC_METHODS = [None] + [m for m in METHODS if m not in SIZED_METHODS]   # None: the baseline


def _value(gin_file: str, name: str) -> str | None:
  """The last value a file binds to `name` (includes first, as gin reads them)."""
  found = re.findall(rf"^{re.escape(name)}\s*=\s*(\S+)", _text(gin_file), re.M)
  return found[-1] if found else None


def _fits(model: str, method: str | None, run: str) -> bool:
  """A pod run goes with the models of its sequence length; STEM needs a SwiGLU FFN (METHODS.md 3)."""
  if method == "methods/stem.gin" and _value(model, "ModelConfig.mlp") == "'gelu'":
    return False
  return run not in POD_RUNS or _value(run, "DataConfig.seq_len") == _value(model, "ModelConfig.max_seq_len")


def _combos() -> list[tuple[str, ...]]:
  out = []
  for models, runs in ((CPU_MODELS, CPU_RUNS), (POD_MODELS, POD_RUNS)):
    for model in models:
      for method in GENERIC_METHODS + [m for m, ms in SIZED_METHODS.items() if model in ms]:
        for run in runs:
          if _fits(model, method, run):
            out.append(tuple(f for f in (model, method, run) if f))
  return out


COMBOS = _combos()


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = tmp_path_factory.mktemp("exp")
  data, _ = make_data(str(root / "data"), docs=80)
  build(data, str(root / "fg"), max_n=3, size=50, min_count=2)
  return data, str(root / "fg")


def test_there_are_experiments():
  assert {"models/tiny.gin", "models/demo.gin", "models/olmo_d2048_l18.gin",
          "models/paper_olmo_d2048_l18.gin", "models/paper_webtext_d1024_l6.gin"} <= set(CPU_MODELS + POD_MODELS)
  assert {"methods/scone.gin", "methods/ngram.gin", "methods/stem.gin"} <= set(METHODS)
  assert {"runs/cpu.gin", "runs/cpu_mesh8.gin", "runs/demo.gin", "runs/v5p_256.gin",
          "runs/v5p_256_seq1024.gin"} <= set(CPU_RUNS + POD_RUNS)
  assert set(MODELS) == set(CPU_MODELS + POD_MODELS) and set(RUNS) == set(CPU_RUNS + POD_RUNS), (
      "every run file includes runs/cpu_base.gin or runs/pod_base.gin")
  assert set(SIZED_METHODS) <= set(METHODS) and {m for ms in SIZED_METHODS.values() for m in ms} <= set(MODELS)


def test_every_gin_file_is_built():
  """Each file is in some combination below, or included by one that is."""
  used = {f for combo in COMBOS for f in combo}
  used |= {inc for f in set(used) for inc in _includes(f)}
  assert set(GIN_FILES) - used == set(), "experiments/ files no combination builds: add them to tests/test_experiments.py"


# What each kind may bind: models the architecture, method overlays the embedding and its config,
# runs data, schedule and mesh. Disjoint, so model, method and run files compose in any order.
ALLOWED = {
    "models": lambda k: k.startswith("ModelConfig.") and k != "ModelConfig.embedding",
    "methods": lambda k: k == "ModelConfig.embedding" or k in ("FGRAM_DIR", "TAGS_DIR")
    or k.split(".")[0] in ("FgramConfig", "NgramHashConfig", "StemConfig"),
    "runs": lambda k: k in ("DATA_DIR", "TRAIN_STEPS", "SEED") or k.split(".")[0] in ("DataConfig", "TrainConfig", "MeshConfig"),
}


@pytest.mark.parametrize("gin_file", GIN_FILES)
def test_gin_file_binds_only_its_kind(gin_file):
  kind = gin_file.split("/")[0]
  assert kind in ALLOWED, gin_file
  assert all(inc.split("/")[0] == kind for inc in _includes(gin_file)), f"{gin_file} includes another kind"
  bad = [k for k in BINDING.findall(_text(gin_file)) if not ALLOWED[kind](k)]
  assert not bad, f"{gin_file} binds {bad}: outside what a {kind[:-1]} file binds"


@pytest.mark.parametrize("files", COMBOS, ids=lambda c: "+".join(os.path.splitext(os.path.basename(f))[0] for f in c))
def test_combination_parses_and_builds(files, dirs):
  data, fg = dirs
  text = "".join(_text(f) for f in files)
  bindings = [f"DATA_DIR = '{data}'"]
  if "FGRAM_DIR" in text:
    bindings.append(f"FGRAM_DIR = '{fg}'")
  # Paper-size SCONE overlays plan K and |V_f| (FgramConfig.max_n/size) for runs whose f-grams are
  # not on this host: build them the way `scone-jax compile` does.
  exp = experiment.load(list(files), bindings, planned="FgramConfig.max_n" in text)
  if not any(f.startswith("methods/") for f in files):
    assert exp.model.embedding == "token"
  abstract = nnx.eval_shape(exp.build_model)
  n = sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert n > 0


TINY = ["--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin"]


@pytest.mark.parametrize("override,needle", [
    ("--gin.ModelConfig.no_such_field=1", "no_such_field"),
    ("--gin.NoSuchConfig.x=1", "NoSuchConfig"),
    ("--gin.ModelConfig.d_model=", "d_model"),
    ("--gin.ModelConfig.remat_policy='sometimes'", "remat_policy"),
    ("--gin.DataConfig.seq_len=100000", "longer than the model supports"),
])
def test_bad_bindings_are_one_line_errors(override, needle, dirs, tmp_path, capsys):
  data, _ = dirs
  rc = main(["train", *TINY, f"--gin.DATA_DIR='{data}'", override, "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
  assert not os.path.exists(tmp_path / "run" / "checkpoints")


def test_missing_macro_is_an_error(tmp_path, capsys):
  rc = main(["train", *TINY, "--workdir", str(tmp_path / "run")])
  err = capsys.readouterr().err.strip()
  assert rc == 2 and "DATA_DIR" in err or "REQUIRED" in err or "required" in err, err
