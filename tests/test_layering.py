"""The stage order of the package: no module imports a package above its own stage, and only
scone_jax/methods/ names an embedding method (docs/DESIGN.md, "Stage import order")."""
from __future__ import annotations

import ast
import os
import re

import scone_jax

ROOT = os.path.dirname(scone_jax.__file__)
# Highest first. A module may import its own stage and any stage below it.
STAGES = [
    ("commands", ("cli", "commands", "sweep", "compare", "demo", "bench", "api")),
    ("serve", ("serve",)),
    ("export", ("export",)),
    ("train", ("train",)),
    ("experiment", ("experiment",)),
    ("methods", ("methods",)),
    ("models", ("models",)),
    ("fgram", ("fgram",)),
    ("data", ("data",)),
    ("base", ("config", "errors", "parallel", "files", "paths", "outputs", "progress", "integrity", "pending", "native_log",
              "__init__")),
]
RANK = {part: i for i, (_, parts) in enumerate(STAGES) for part in parts}


def _modules():
  for dirpath, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(dirpath, f)
        yield os.path.relpath(path, ROOT), path


def _stage(relpath: str) -> int:
  top = relpath.split(os.sep)[0]
  return RANK[top[:-3] if top.endswith(".py") else top]


def _imports(path: str):
  tree = ast.parse(open(path).read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scone_jax"):
      names = [node.module] + [f"{node.module}.{a.name}" for a in node.names] if node.module == "scone_jax" else [node.module]
      for name in names:
        yield node.lineno, name
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name.startswith("scone_jax"):
          yield node.lineno, a.name


def test_every_module_belongs_to_a_stage():
  for rel, _ in _modules():
    assert rel.split(os.sep)[0].removesuffix(".py") in RANK, f"{rel}: add its package to STAGES"


def test_no_module_imports_a_stage_above_its_own():
  bad = []
  for rel, path in _modules():
    own = _stage(rel)
    for line, name in _imports(path):
      parts = name.split(".")
      if len(parts) < 2 or parts[1] not in RANK:
        continue
      if RANK[parts[1]] < own:
        bad.append(f"{rel}:{line} imports {name} ({STAGES[RANK[parts[1]]][0]} is above {STAGES[own][0]})")
  assert not bad, "\n".join(bad)


def test_only_methods_name_a_method():
  """Outside scone_jax/methods/ nothing asks which method runs by its name."""
  pattern = re.compile(r"""embedding\s*[!=]=\s*["'](token|scone|ngram_hash|stem)["']""")
  hits = [f"{rel}:{i}" for rel, path in _modules() if not rel.startswith("methods")
          for i, line in enumerate(open(path), 1) if pattern.search(line)]
  assert not hits, hits
