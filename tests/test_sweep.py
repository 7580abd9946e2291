"""`scone-jax sweep`: planning, one f-gram count per K, the local backend end to end, the collector
over failed and missing runs, the pod/xpk/SLURM backends by their dry runs, and its one-line errors.

References are independent of the sweep's code: means and stds recomputed here from each run's
own summary.json, baseline step counts from `describe` called here, f-gram prefixes against
files built directly with --size."""
from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys

import pytest

from scone_jax.cli import main
from scone_jax.commands import sweep_results as R

TINY = ["--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", "--gin.FgramConfig.max_n=3",
        "--gin.DataConfig.seq_len=32", "--gin.DataConfig.batch_size=8", "--gin.ModelConfig.d_model=32",
        "--gin.ModelConfig.d_ff=64", "--gin.TrainConfig.eval_batches=1", "--min_count", "2"]
GRID = ["--axis", "FgramConfig.size=20,60", "--axis", "FgramConfig.num_layers=1,2", "--seeds", "0,1"]


def _lines(text: str) -> list[list[str]]:
  """Dry-run output -> the argv of every command line (comments and here-documents skipped)."""
  out, lines, i = [], text.splitlines(), 0
  while i < len(lines):
    line = lines[i]
    if line.endswith("<<'SCONE_EOF'"):
      i = lines.index("SCONE_EOF", i) + 1
      continue
    if line and not line.startswith("#"):
      words = shlex.split(line)
      out.append(words[words.index("||") + 1:] if "||" in words else words)   # `probe || command`
    i += 1
  return out


def _gin(words: list[str]) -> dict[str, str]:
  return dict(w[len("--gin."):].split("=", 1) for w in words if w.startswith("--gin."))


def _describe(files: list[str], bindings: dict[str, str], vocab: int) -> dict:
  from scone_jax.commands import describe
  b = [f"{k} = {v}" for k, v in bindings.items() if k not in ("DATA_DIR", "FGRAM_DIR")]
  return describe.describe(files, b + [f"ModelConfig.vocab_size = {vocab}"])


# ---- f-grams: one count serves every smaller |V_f| ------------------------------------------------------

def test_a_prefix_of_the_largest_file_is_the_file_built_at_that_size(tiny_corpus, tmp_path):
  """The ranking (count desc, n asc, ids asc) is a total order and each pass keeps its top S by
  (count desc, ids asc), the same order within one length: so the first S' rows of the file built
  at S are the file built at S' for every S' <= S, ties at the cutoff included."""
  from scone_jax.fgram import vocab as V
  from scone_jax.methods.scone import FgramConfig, _load_vocab
  big = str(tmp_path / "big")
  assert main(["fgrams", "build", "--data", tiny_corpus, "--max_n", "3", "--size", "400", "--min_count", "2",
               "--out", big]) == 0
  full = V.load(big)
  counts = list(full.counts)
  ties = [s for s in range(1, len(counts)) if counts[s - 1] == counts[s]]   # the cutoff splits equal counts
  assert len(ties) > 3
  for size in sorted({ties[0], ties[len(ties) // 2], ties[-1], 1, len(counts)}):
    direct = str(tmp_path / f"s{size}")
    assert main(["fgrams", "build", "--data", tiny_corpus, "--max_n", "3", "--size", str(size), "--min_count", "2",
                 "--out", direct]) == 0
    want = V.load(direct)
    got = _load_vocab(FgramConfig(fgram_dir=big, size=size), V.load_meta(big))   # what a run reads
    assert len(got.counts) == len(want.counts) == size
    assert (got.flat == want.flat).all() and (got.offsets == want.offsets).all() and (got.counts == want.counts).all()


# ---- the local backend, end to end -------------------------------------------------------------------

@pytest.mark.slow
def test_local_sweep_end_to_end(tiny_corpus, tmp_path, capsys, monkeypatch):
  from scone_jax.fgram import build as build_lib
  counted = []
  real = build_lib.count_fgrams
  monkeypatch.setattr(build_lib, "count_fgrams", lambda *a, **k: counted.append(k["size"]) or real(*a, **k))
  out = str(tmp_path / "sw")
  argv = ["sweep", *TINY, "--gin.TRAIN_STEPS=2", *GRID, "--baselines", "equal_steps,equal_flops",
          "--data", tiny_corpus, "--out", out, "--jobs", "2"]
  assert main([*argv, "--dry_run"]) == 0
  dry = _lines(capsys.readouterr().out)
  assert not os.path.exists(out)                       # a dry run writes nothing
  assert [w[1:3] for w in dry].count(["fgrams", "build"]) == 1
  assert main(argv) == 0
  assert counted == [60]                               # one count, at the largest |V_f|, for both sizes
  assert os.listdir(os.path.join(out, "fgrams")) == ["k3_s60_c2"]
  plan = json.load(open(os.path.join(out, "sweep.json")))
  points = [r for r in plan["runs"] if r["role"] == "point"]
  assert len(points) == 8 and len(plan["runs"]) == 10  # equal FLOPs at 2 steps is the 2-step baseline
  table = json.load(open(os.path.join(out, "table.json")))
  rows = table["points"]
  # Independent reference: group the planned runs by their overrides, read each summary.json.
  by_point: dict = {}
  for r in plan["runs"]:
    cfg = R.parse_config(open(os.path.join(r["workdir"], "config.gin")).read())
    if r["role"] == "point":
      assert cfg["FgramConfig.fgram_dir"] == os.path.join(out, "fgrams", "k3_s60_c2")
      assert cfg["FgramConfig.size"] == int(r["overrides"]["FgramConfig.size"])
    key = (r["overrides"].get("FgramConfig.size"), r["overrides"].get("FgramConfig.num_layers"))
    by_point.setdefault(key, []).append(json.load(open(os.path.join(r["workdir"], "summary.json"))))
  assert len(rows) == len(by_point) == 5
  for (size, layers), summaries in by_point.items():
    [row] = [x for x in rows if (str(x["fgram_size"]) if x["fgram_size"] else None, str(x["af_layers"])
                                 if x["af_layers"] else None) == (size, layers)]
    ppl = [s["eval_perplexity"] for s in summaries]
    assert row["perplexity"] == pytest.approx(statistics.mean(ppl))
    assert row["perplexity_std"] == pytest.approx(statistics.stdev(ppl))
    assert row["seeds_done"] == [0, 1]
    for k in ("resident_params", "training_params", "offloaded_entries"):
      assert row[k] == summaries[0]["accounting"][k]
    assert row["train_flops"] == summaries[0]["accounting"]["train_flops_per_token"] * 2 * 8 * 32
  base = [x for x in rows if x["baseline"]]
  assert len(base) == 1 and all(x["resident_params"] == base[0]["resident_params"] for x in rows)
  # Figures: the data each plot receives, and the drawn Figure.
  figures = {f.name: f for f in R.figure_data(rows, list(plan["axes"]))}
  assert sorted(figures) == ["ppl_vs_af_params", "ppl_vs_fgrams", "ppl_vs_k"]
  vf, af = figures["ppl_vs_fgrams"], figures["ppl_vs_af_params"]
  assert [len(s.x) for s in vf.series] == [2, 2] and all(s.x == [20, 60] for s in vf.series)
  assert [len(s.x) for s in af.series] == [2, 2] and sorted(len(set(s.x)) for s in af.series) == [2, 2]
  assert len(figures["ppl_vs_k"].series) == 4 and all(s.x == [3] for s in figures["ppl_vs_k"].series)
  assert vf.log_x and figures["ppl_vs_k"].integer_x
  for f in figures.values():
    assert [b[1] for b in f.bands] == [pytest.approx(base[0]["perplexity"])]
    fig = R.draw(f)
    ax = fig.axes[0]
    assert len(ax.containers) == len(f.series)            # one errorbar container per series
    low, high = ax.get_ylim()
    ys = [(y - e, y + e) for s in f.series for y, e in zip(s.y, s.err)]
    band = (f.bands[0][1] - f.bands[0][2], f.bands[0][1] + f.bands[0][2])
    assert low <= min(min(a for a, _ in ys), band[0]) and high >= max(max(b for _, b in ys), band[1])
    assert low > 0 and high - low < 2 * max(b for _, b in ys)   # not from zero, not blown up
    if f.integer_x:
      assert [t for t in ax.get_xticks()] == [3]
  for name in figures:
    assert open(os.path.join(out, f"{name}.png"), "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  # A rerun finds every run finished and only rewrites the table; counts nothing.
  capsys.readouterr()
  assert main(argv) == 0
  text = capsys.readouterr().out
  assert text.count("done before") == 10 and "built before" in text and counted == [60]


# ---- the collector ----------------------------------------------------------------------------------

CONFIG = """# Macros:
DATA_DIR = '/d'
FGRAM_DIR = '{fg}'
SEED = {seed}
TRAIN_STEPS = {steps}

DataConfig.batch_size = 4
DataConfig.seq_len = 8
FgramConfig.fgram_dir = %FGRAM_DIR
FgramConfig.max_n = 0
FgramConfig.num_layers = {layers}
FgramConfig.size = {size}
ModelConfig.d_model = 16
ModelConfig.embedding = '{method}'
TrainConfig.seed = %SEED
TrainConfig.steps = %TRAIN_STEPS
TrainConfig.buckets = [1,
    2]
"""


def _fake_run(path, *, seed, size, layers, ppl, fg, method="scone", summary=True, steps=10):
  os.makedirs(path)
  with open(os.path.join(path, "config.gin"), "w") as f:
    f.write(CONFIG.format(fg=fg if method == "scone" else "", seed=seed, size=size, layers=layers, method=method,
                          steps=steps))
  if summary:
    acct = {"resident_params": 100, "training_params": 50 * layers if method == "scone" else 0,
            "offloaded_entries": size * 16 if method == "scone" else 0, "train_flops_per_token": 1000.0 + layers,
            "inference_flops_per_token": 300.0}
    with open(os.path.join(path, "summary.json"), "w") as f:
      json.dump({"eval_perplexity": ppl, "eval_loss": ppl / 100, "accounting": acct}, f)


def test_collector_lists_failed_and_missing_runs(tmp_path, capsys):
  out = str(tmp_path / "sw")
  fg = str(tmp_path / "fg")
  os.makedirs(fg)
  with open(os.path.join(fg, "meta.json"), "w") as f:
    json.dump({"max_n": 4, "num_fgrams": 99}, f)
  runs = os.path.join(out, "runs")
  ppl = {("a", 0): 50.0, ("a", 1): 54.0, ("a", 2): 55.0, ("b", 0): 40.0, ("base", 0): 60.0, ("base", 1): 62.0}
  for (point, seed), value in ppl.items():
    size = {"a": 8, "b": 16, "base": 0}[point]
    _fake_run(os.path.join(runs, f"{point}{seed}"), seed=seed, size=size, layers=1, ppl=value, fg=fg,
              method="token" if point == "base" else "scone")
  _fake_run(os.path.join(runs, "crashed"), seed=1, size=16, layers=1, ppl=0, fg=fg, summary=False)
  # A baseline point none of whose runs finished: still the baseline (its config says so), not "token".
  _fake_run(os.path.join(runs, "long0"), seed=0, size=0, layers=1, ppl=0, fg=fg, method="token", summary=False, steps=20)
  planned = [os.path.join(runs, n) for n in ("a0", "a1", "a2", "b0", "crashed", "never", "base0", "base1", "long0")]
  with open(os.path.join(out, "sweep.json"), "w") as f:
    json.dump({"axes": {"FgramConfig.size": ["8", "16"]}, "runs": [{"workdir": w} for w in planned]}, f)
  assert main(["sweep", "--out", out, "--collect_only"]) == 0
  table = json.load(open(os.path.join(out, "table.json")))
  status = {os.path.basename(r["workdir"]): r["status"] for r in table["runs"]}
  assert status == {"a0": "done", "a1": "done", "a2": "done", "b0": "done", "crashed": "failed", "never": "missing",
                    "base0": "done", "base1": "done", "long0": "failed"}
  rows = {(r["fgram_size"], r["baseline"], r["steps"]): r for r in table["points"]}
  a, b, base = rows[(8, False, 10)], rows[(16, False, 10)], rows[(None, True, 10)]
  assert a["perplexity"] == pytest.approx(statistics.mean([50, 54, 55]))
  assert a["perplexity_std"] == pytest.approx(statistics.stdev([50, 54, 55]))
  assert b["perplexity"] == 40.0 and b["seeds"] == [0, 1] and b["seeds_done"] == [0]   # the crashed seed
  assert a["max_n"] == 4 and a["af_width"] == 16                                        # K from FG's meta.json
  assert base["perplexity"] == pytest.approx(61.0) and base["training_params"] == 0
  assert a["train_flops"] == 1001.0 * 10 * 4 * 8
  md = open(os.path.join(out, "table.md")).read()
  assert "| failed |" in md and "| missing |" in md and "54.85 ± 2.75" not in md
  [long] = [r for r in table["points"] if r["steps"] == 20]
  assert long["baseline"] and "perplexity" not in long and "| token |" not in md
  assert f"{statistics.mean([50, 54, 55]):.2f} ± {statistics.stdev([50, 54, 55]):.2f}" in md
  [vf] = [f for f in R.figure_data(table["points"], ["FgramConfig.size"]) if f.name == "ppl_vs_fgrams"]
  assert [s.x for s in vf.series] == [[8, 16]] and vf.bands[0][1] == pytest.approx(61.0)
  assert R.parse_config(CONFIG.format(fg="x", seed=3, size=1, layers=1, method="s", steps=10))["TrainConfig.buckets"] == [1, 2]


def test_y_limits_start_below_the_lowest_point_and_show_every_band():
  low, high = R.y_limits([217.0, 233.0], [221.0, 236.5])
  assert 200 <= low <= 217 and 236.5 <= high <= 250
  assert R.y_limits([0.5], [0.6])[0] == 0.0 or R.y_limits([0.5], [0.6])[0] > 0


# ---- the pod, xpk and SLURM backends, by their dry runs ------------------------------------------------------

def _train_words(text: str) -> list[str]:
  """The `scone-jax train ...` words inside a remote command or a script."""
  start = text.index("scone-jax train --")
  end = min([i for i in (text.find(" 2>&1", start), text.find(" \\\n", start), text.find("\n", start)) if i > 0]
            or [len(text)])
  return shlex.split(text[start:end])


@pytest.mark.parametrize("backend,flags", [
    ("tpu", ["--name", "scone-v5p", "--zone", "us-east5-a"]),
    ("xpk", ["--cluster", "c", "--workload", "sw", "--tpu_type", "v5p-256", "--docker_image", "img"]),
    ("slurm", ["--nodes", "2", "--gpus_per_node", "8"]),
])
def test_backend_dry_runs(backend, flags, tiny_corpus, tmp_path, capsys):
  out = str(tmp_path / "sw")
  argv = ["sweep", *TINY, "--gin.TRAIN_STEPS=200", *GRID, "--baselines", "equal_steps,equal_flops",
          "--data", tiny_corpus, "--out", out, "--backend", backend, *flags]
  if backend == "slurm":
    argv += ["--script_dir", str(tmp_path / "scripts")]
  assert main([*argv, "--dry_run"]) == 0
  text = capsys.readouterr().out
  assert not os.path.exists(out) and not os.path.exists(tmp_path / "scripts")
  lines = _lines(text)
  builds = [w for w in lines if w[1:3] == ["fgrams", "build"]]
  assert len(builds) == 1 and builds[0][builds[0].index("--size") + 1] == "60"
  fg = builds[0][builds[0].index("--out") + 1]
  if backend == "slurm":
    scripts = [text[m:text.index("SCONE_EOF", text.index("\n", m))] for m in range(len(text))
               if text.startswith("cat > ", m) and ".sbatch" in text[m:text.index("\n", m)]]
    trains = [_train_words(s) for s in scripts]
  else:
    launches = [w for w in lines if w[0] in ("gcloud", "xpk")]
    trains = [_train_words(w[w.index("--command") + 1]) for w in launches]
    if backend == "xpk":
      assert [w[4] for w in launches] == [f"--workload=sw-{i}" for i in range(len(launches))]
  assert all(t[:2] == ["scone-jax", "train"] for t in trains)
  points = [t for t in trains if "methods/scone.gin" in t]
  assert len(points) == 8
  assert {(g["FgramConfig.size"], g["FgramConfig.num_layers"], g["SEED"]) for g in map(_gin, points)} == {
      (s, n, seed) for s in ("20", "60") for n in ("1", "2") for seed in ("0", "1")}
  assert all(_gin(t)["FGRAM_DIR"] == f"'{fg}'" and _gin(t)["DATA_DIR"] == f"'{tiny_corpus}'" for t in points)
  # Baselines: 200 steps, and for each point the steps of equal training FLOPs, from `describe` here.
  vocab = json.load(open(os.path.join(tiny_corpus, "meta.json")))["vocab_size"]
  want = {200}
  for t in points:
    g = _gin(t)
    d = _describe(["models/tiny.gin", "methods/scone.gin", "runs/cpu.gin"], {k: v for k, v in g.items() if k != "SEED"},
                  vocab)
    want.add(200 * d["accounting"]["train_flops_per_token"] // d["equal_flops"]["baseline_train_flops_per_token"])
  baselines = [t for t in trains if "methods/scone.gin" not in t]
  got = [int(_gin(t)["TRAIN_STEPS"]) for t in baselines]
  assert sorted(set(got)) == sorted(int(s) for s in want) and len(want) > 2
  assert len(baselines) == 2 * len(want)
  assert not any(k.startswith("FgramConfig.") or k == "FGRAM_DIR" for t in baselines for k in _gin(t))


# ---- errors -----------------------------------------------------------------------------------------

ERRORS = {
    "sweep-axis-given-twice": (["--axis", "FgramConfig.size=8", "--axis", "FgramConfig.size=16"], "is given twice"),
    "sweep-axis-and-gin-flag": (["--axis", "FgramConfig.size=8", "--gin.FgramConfig.size=4"], "both an --axis"),
    "sweep-axis-not-name-values": (["--axis", "FgramConfig.size"], "is not NAME=V1,V2"),
    "sweep-axis-empty-value": (["--axis", "FgramConfig.size=8,,16"], "empty value"),
    "sweep-axis-unclosed-quote": (["--axis", "ModelConfig.mlp='gelu"], "unclosed"),
    "sweep-axis-seed": (["--axis", "SEED=1,2"], "set by --seeds"),
    "sweep-no-fgram-size": ([], "no |V_f|"),
    "sweep-unknown-baseline": (["--axis", "FgramConfig.size=8", "--baselines", "equal_tokens"], "is not one of"),
    "sweep-old-flag": (["--sizes", "8,16"], "unrecognized arguments"),
    "sweep-backend-flag-missing": (["--axis", "FgramConfig.size=8", "--backend", "tpu"], "required"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_one_line_errors(case, tiny_corpus, tmp_path, capsys):
  argv, message = ERRORS[case]
  out = str(tmp_path / "sw")
  assert main(["sweep", *TINY, *argv, "--data", tiny_corpus, "--out", out, "--dry_run"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("scone-jax sweep: error:") and message in err, err
  assert not os.path.exists(out)


def test_collect_only_without_a_plan_is_one_line(tmp_path, capsys):
  assert main(["sweep", "--out", str(tmp_path / "none"), "--collect_only"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "sweep.json' does not exist" in err
  out = tmp_path / "planned"
  out.mkdir()
  (out / "sweep.json").write_text(json.dumps({"axes": {}, "runs": [{"workdir": str(out / "runs" / "never")}]}))
  assert main(["sweep", "--out", str(out), "--collect_only"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "none of the 1 runs" in err and not (out / "table.md").exists()


def test_too_few_fgrams_for_the_largest_size_is_one_line(tiny_corpus, tmp_path, capsys):
  out = str(tmp_path / "sw")
  assert main(["sweep", *TINY, "--axis", "FgramConfig.size=8,1000000", "--data", tiny_corpus, "--out", out]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "has only" in err[0] and "lower --min_count" in err[0], err
  assert not os.path.exists(os.path.join(out, "runs")) and not os.path.exists(os.path.join(out, "sweep.json"))


def test_compare_figure_uses_the_sweeps_y_axis():
  from scone_jax import compare
  table = [{"method": m, "seeds": [0, 1], "eval_perplexity": p, "eval_perplexity_std": s}
           for m, p, s in (("baseline", 235.5, 0.4), ("scone", 217.4, 1.0), ("ngram_hash", 228.0, 0.0))]
  fig = compare.figure(table, [{"seed": 0, "method": "baseline", "train_losses": [(1, 5.0), (2, 4.0)]}])
  ax = fig.axes[1]
  low, high = ax.get_ylim()
  assert 200 <= low <= 216.4 and 235.9 <= high < 260   # below the lowest point minus its error; not from 160
  assert len(ax.containers) == 3 and [t.get_text() for t in ax.get_xticklabels()] == ["baseline", "scone", "ngram_hash"]


RAW_ERRORS = {   # full argv: DATA is the tiny corpus, OUT a fresh path
    "sweep-no-fgram-order": (["--gin_file", "models/tiny.gin", "--gin_file", "runs/cpu.gin", "--axis",
                              "FgramConfig.size=8"], "no K for FgramConfig.size=8"),
    "sweep-no-gin-file": (["--axis", "FgramConfig.size=8"], "no --gin_file"),
    "sweep-tpu-detach-with-several-runs": ([*TINY, "--axis", "FgramConfig.size=8", "--seeds", "0,1", "--backend", "tpu",
                                            "--name", "t", "--zone", "z", "--detach"], "--detach"),
    "sweep-jobs-0": ([*TINY, "--axis", "FgramConfig.size=8", "--jobs", "0"], "--jobs 0 must be >= 1"),
}


@pytest.mark.parametrize("case", list(RAW_ERRORS))
def test_more_one_line_errors(case, tiny_corpus, tmp_path, capsys):
  argv, message = RAW_ERRORS[case]
  out = str(tmp_path / "sw")
  assert main(["sweep", *argv, "--data", tiny_corpus, "--out", out, "--dry_run"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("scone-jax sweep: error:") and message in err, err
  assert not os.path.exists(out)
  assert main(["sweep", *TINY, "--axis", "FgramConfig.size=8", "--out", out, "--dry_run"]) == 2
  assert "no --data" in capsys.readouterr().err


def test_config_values_gin_wrapped_onto_the_next_line_are_read_whole():
  """gin writes a long value as `NAME = \\` and the value indented on the next line (a long path:
  the end-to-end run's fgram_dir under a long pytest path read as '\\' before)."""
  text = "DIR = \\\n    '/a/very/long/path'\nX.b = [1,\n     2]\nX.c = %DIR\n"
  assert R.parse_config(text) == {"DIR": "/a/very/long/path", "X.b": [1, 2], "X.c": "/a/very/long/path"}


def test_a_bucket_sweep_probes_its_fgram_build_through_epath(tiny_corpus, tmp_path, capsys):
  """`test -f` cannot see a bucket object: with a gs:// --out the build's guard asks etils.epath,
  and that probe, run here on a local path, exits 0 exactly when the build's meta.json exists."""
  argv = ["sweep", *TINY, *GRID, "--data", tiny_corpus, "--out", "gs://bucket/sw", "--backend", "xpk",
          "--cluster", "c", "--workload", "sw", "--tpu_type", "v5p-256", "--dry_run"]
  assert main(argv) == 0
  guard = next(line for line in capsys.readouterr().out.splitlines() if "fgrams build" in line)
  probe = shlex.split(guard.split(" || ")[0])
  assert probe[:2] == ["python3", "-c"] and "epath.Path('gs://bucket/sw/fgrams/" in probe[2]
  local = tmp_path / "fg"
  code = probe[2].replace(probe[2][probe[2].index("'gs://"):probe[2].index("meta.json'") + 10], repr(str(local / "meta.json")))
  assert subprocess.run([sys.executable, "-c", code]).returncode == 1
  local.mkdir()
  (local / "meta.json").write_text("{}")
  assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_differences_from_the_baseline_are_paired_by_seed():
  """A seed gives a point and its baseline the same data order and initialisation: the differences
  are taken seed by seed (here the seeds' spread, 10 ppl, is shared and cancels)."""
  base = {"baseline": True, "steps": 300, "perplexity": 165.0, "per_seed": {"0": 155.0, "1": 165.0, "2": 175.0}}
  point = {"baseline": False, "steps": 300, "perplexity": 162.0, "per_seed": {"0": 151.0, "1": 163.0, "2": 172.0}}
  d = R.paired_delta(point, base)
  assert d["mean"] == pytest.approx(-3.0) and d["std"] == pytest.approx(1.0) and (d["seeds"], d["lower"]) == (3, 3)
  assert R._delta({"delta_equal_steps": d}, "equal_steps") == "-3.00 ± 1.00 (3/3 lower; 300 steps)"
  assert R.paired_delta(point, {**base, "per_seed": {"5": 1.0}}) is None   # no seed in common
  assert R.paired_delta({**point, "per_seed": {"0": 151.0, "7": 1.0}}, base)["seeds"] == 1
