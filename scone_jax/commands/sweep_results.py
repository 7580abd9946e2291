"""The results of a set of runs: read from each RUN's own files, tabled and drawn.

Used by `scone-jax sweep` (its collector, table and figures) and `scone-jax compare` (its run
reader, its y-axis and its error bars).

A run is described by what it wrote, never by its directory name: RUN/config.gin (the operative
gin configuration, macros resolved here) gives its coordinates (method, |V_f|, K, A_f depth and
width, steps, seed, and any sweep axis by its gin name), RUN/summary.json its metrics and its
accounting (docs/METHODS.md 4). A run without config.gin is *missing*, one with config.gin but no
summary.json *failed* (crashed, killed or still running); both are listed, not dropped.

Paths: every run file is read through the four functions of the "paths" section (`join`,
`exists`, `read_text`, `list_dirs`), which are scone_jax/paths.py's: a RUN may be local or a
bucket URL (gs://...). The table and figures are written to a local OUT.
"""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import statistics

from scone_jax import config as C, paths
from scone_jax.errors import UserError
from scone_jax.outputs import pyplot

# ---- paths: the one place that touches a run's files (local or gs://: scone_jax/paths.py) -------

join, exists, read_text, list_dirs = paths.join, paths.exists, paths.read_text, paths.list_dirs


# ---- RUN/config.gin -------------------------------------------------------------------------------


def _value(text: str, macros: dict):
  text = text.strip()
  if text.startswith("%"):
    return macros.get(text[1:], text)
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text   # a configurable reference (@f) or another gin expression: kept as written


def parse_config(text: str) -> dict:
  """The bindings of an operative gin config: {"Class.field": value, "MACRO": value}, with
  %MACRO references resolved and literals parsed (config.operative_bindings reads the text)."""
  raw = C.operative_bindings(text)
  macros = {k: _value(v, {}) for k, v in raw.items() if "." not in k}
  return {k: _value(v, macros) for k, v in raw.items()}


# ---- runs -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """One run as its files describe it."""
  workdir: str
  status: str                      # done | failed | missing
  coords: dict                     # coordinate name -> value (seed included)
  summary: dict                    # RUN/summary.json ({} unless done)
  note: str = ""

  @property
  def accounting(self) -> dict:
    return self.summary.get("accounting", {})

  @property
  def is_baseline(self) -> bool:
    """The main model alone: nothing training-only, no table offloaded or offloadable (the accounting
    says so, not the method's name: LongCat's and STEM's tables count resident but offloadable)."""
    a = self.accounting
    return all(a.get(k, 0) == 0 for k in ("training_params", "offloaded_entries", "offloadable_entries"))


def _fgram_meta(fgram_dir) -> dict:
  path = join(str(fgram_dir), "meta.json") if fgram_dir else ""
  return json.loads(read_text(path)) if path and exists(path) else {}


def coordinates(cfg: dict, axes=()) -> dict:
  """A run's coordinates from its operative config: the sweep's axes by gin name, and the
  derived ones every table and figure uses."""
  fg = _fgram_meta(cfg.get("FgramConfig.fgram_dir")) if cfg.get("FgramConfig.fgram_dir") else {}
  scone = bool(cfg.get("FgramConfig.fgram_dir"))
  coords = {
      "method": cfg.get("ModelConfig.embedding", "?"),
      "steps": cfg.get("TrainConfig.steps"),
      "seed": cfg.get("TrainConfig.seed", cfg.get("SEED")),
      "tokens_per_step": (cfg.get("DataConfig.batch_size") or 0) * (cfg.get("DataConfig.seq_len") or 0),
      "fgram_size": (cfg.get("FgramConfig.size") or fg.get("num_fgrams")) if scone else None,
      "max_n": (cfg.get("FgramConfig.max_n") or fg.get("max_n")) if scone else None,
      "af_layers": cfg.get("FgramConfig.num_layers") if scone else None,
      "af_width": (cfg.get("FgramConfig.d_model") or cfg.get("ModelConfig.d_model")) if scone else None,
  }
  for name in axes:
    if name not in coords:
      coords[name] = cfg.get(name)
  return coords


def read_run(workdir: str, axes=()) -> Run:
  """The run in `workdir` (missing, failed or done), described by its own files."""
  config = join(workdir, "config.gin")
  if not exists(config):
    return Run(workdir, "missing", {}, {}, "no config.gin: never started")
  coords = coordinates(parse_config(read_text(config)), axes)
  summary_path = join(workdir, "summary.json")
  if not exists(summary_path):
    return Run(workdir, "failed", coords, {}, "no summary.json: crashed, killed or still running")
  summary = json.loads(read_text(summary_path))
  if "eval_perplexity" not in summary:
    return Run(workdir, "failed", coords, summary, "summary.json has no eval_perplexity (TrainConfig.eval_batches=0?)")
  return Run(workdir, "done", coords, summary)


def read_runs(workdirs, axes=()) -> list[Run]:
  return [read_run(w, axes) for w in workdirs]


# ---- points: runs that differ only in their seed ----------------------------------------------------

ACCOUNTING = ("resident_params", "training_params", "offloaded_entries", "train_flops_per_token",
              "inference_flops_per_token")


def mean_std(values) -> tuple[float, float]:
  values = list(values)
  return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def point_key(run: Run) -> tuple:
  return tuple(sorted((k, repr(v)) for k, v in run.coords.items() if k != "seed"))


def aggregate(runs: list[Run]) -> list[dict]:
  """One row per point (runs equal but for the seed): perplexity and loss mean +- std over its
  finished seeds, the accounting, training FLOPs; planned and finished seeds."""
  groups: dict[tuple, list[Run]] = {}
  for r in runs:
    if r.status != "missing":
      groups.setdefault(point_key(r), []).append(r)
  rows = []
  for group in groups.values():
    done = [r for r in group if r.status == "done"]
    row = {k: v for k, v in group[0].coords.items() if k != "seed"}
    row["seeds"] = sorted(r.coords.get("seed") for r in group)
    row["seeds_done"] = sorted(r.coords.get("seed") for r in done)
    # Finished: the accounting says it. None finished: the config's method (the main model alone).
    row["baseline"] = done[0].is_baseline if done else group[0].coords.get("method") == "token"
    row["runs"] = [r.workdir for r in group]
    if done:
      row["perplexity"], row["perplexity_std"] = mean_std(r.summary["eval_perplexity"] for r in done)
      row["per_seed"] = {str(r.coords.get("seed")): r.summary["eval_perplexity"] for r in done}
      row["loss"], row["loss_std"] = mean_std(r.summary["eval_loss"] for r in done)
      for k in ACCOUNTING:
        row[k] = done[0].accounting.get(k)
      sightings = [r.summary["fgram_sightings"] / row["fgram_size"] for r in done
                   if r.summary.get("fgram_sightings") is not None and row.get("fgram_size")]
      if sightings:   # training positions that used an f-gram's embedding, per f-gram of V_f
        row["sightings_per_fgram"] = statistics.fmean(sightings)
      if row.get("train_flops_per_token") is not None and row["steps"]:
        row["train_flops"] = row["train_flops_per_token"] * row["steps"] * row["tokens_per_step"]
    rows.append(row)
  return rows


def main_key(row: dict, axes=()) -> tuple:
  """What a run shares with its baseline: the sweep's axes outside SCONE's own (FgramConfig.*)."""
  return tuple(repr(row.get(a)) for a in axes if not a.startswith("FgramConfig."))


def matching_baselines(row: dict, baselines: list[dict], axes=()) -> dict:
  """{"equal_steps": the baseline point of the same steps, "equal_flops": the one trained
  floor(steps x F_train(row) / F_train(baseline)) steps (docs: `scone-jax describe`), each or None}."""
  same = [b for b in baselines if main_key(b, axes) == main_key(row, axes) and "perplexity" in b]
  out = {"equal_steps": next((b for b in same if b["steps"] == row["steps"]), None), "equal_flops": None}
  if row.get("train_flops_per_token"):
    for b in same:
      if b["steps"] == equal_flops_steps(row["steps"], row["train_flops_per_token"], b["train_flops_per_token"]):
        out["equal_flops"] = b
  return out


def paired_delta(row: dict, base: dict) -> dict | None:
  """The point's perplexity minus its baseline's, seed by seed (a seed fixes the data order and the
  initialisation of both, so the seed-to-seed spread they share cancels): mean and sample std of
  the differences over the seeds both finished, and how many are below 0."""
  seeds = sorted(set(row.get("per_seed", {})) & set(base.get("per_seed", {})))
  if not seeds:
    return None
  diffs = [row["per_seed"][s] - base["per_seed"][s] for s in seeds]
  mean, std = mean_std(diffs)
  return {"mean": mean, "std": std, "seeds": len(seeds), "lower": sum(d < 0 for d in diffs),
          "baseline_steps": base["steps"]}


def add_deltas(rows: list[dict], axes=()) -> None:
  """Every SCONE point's paired differences from its equal-steps and equal-FLOPs baselines."""
  baselines = [r for r in rows if r["baseline"] and "perplexity" in r]
  for row in rows:
    if row["baseline"] or "perplexity" not in row:
      continue
    for name, base in matching_baselines(row, baselines, axes).items():
      delta = paired_delta(row, base) if base is not None else None
      if delta is not None:
        row[f"delta_{name}"] = delta


def _delta(row: dict, name: str) -> str:
  d = row.get(f"delta_{name}")
  if d is None:
    return "-"
  spread = f" ± {d['std']:.2f}" if d["seeds"] > 1 else ""
  return f"{d['mean']:+.2f}{spread} ({d['lower']}/{d['seeds']} lower; {d['baseline_steps']:,} steps)"


def equal_flops_steps(steps: int, flops_per_token: float, baseline_flops_per_token: float) -> int:
  """Baseline steps with the training FLOPs of `steps` steps at `flops_per_token` (same tokens per
  step): the inverse of `describe`'s equal_flops.steps (which shortens the SCONE run instead)."""
  return int(steps * flops_per_token // baseline_flops_per_token)


# ---- table ----------------------------------------------------------------------------------------


def _pm(row: dict, key: str, fmt: str) -> str:
  if key not in row:
    return "-"
  std = f" ± {format(row[key + '_std'], fmt)}" if len(row["seeds_done"]) > 1 else ""
  return format(row[key], fmt) + std


def _num(v) -> str:
  return "-" if v is None else (f"{v:,}" if isinstance(v, int) else f"{v:,.4g}")


def table_md(rows: list[dict], runs: list[Run], axes=(), title: str = "Sweep") -> str:
  extra = [a for a in axes if a not in ("FgramConfig.size", "FgramConfig.max_n", "FgramConfig.num_layers",
                                        "FgramConfig.d_model")]
  head = ["point", "steps", "K", "|V_f|", "A_f layers", "A_f width", *extra, "seeds (done/planned)", "val ppl",
          "val loss", "Δ ppl vs baseline, equal steps", "Δ ppl vs baseline, equal FLOPs", "sightings / f-gram", "train FLOPs", "resident params", "training-only params",
          "offloaded entries"]
  lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  order = sorted(rows, key=lambda r: (not r["baseline"], repr(main_key(r, axes)), r["steps"] or 0,
                                      r.get("max_n") or 0, r.get("fgram_size") or 0, r.get("af_layers") or 0,
                                      r.get("af_width") or 0))
  for r in order:
    name = "baseline" if r["baseline"] else str(r["method"])
    cells = [name, _num(r["steps"]), _num(r.get("max_n")), _num(r.get("fgram_size")), _num(r.get("af_layers")),
             _num(r.get("af_width")), *[str(r.get(a)) for a in extra],
             f"{len(r['seeds_done'])}/{len(r['seeds'])}", _pm(r, "perplexity", ".2f"), _pm(r, "loss", ".4f"),
             _delta(r, "equal_steps"), _delta(r, "equal_flops"), _num(r.get("sightings_per_fgram")), _num(r.get("train_flops")), _num(r.get("resident_params")), _num(r.get("training_params")),
             _num(r.get("offloaded_entries"))]
    lines.append("| " + " | ".join(cells) + " |")
  unfinished = [r for r in runs if r.status != "done"]
  if unfinished:
    lines += ["", "Runs not finished (not in the means above):", "", "| run | status | why |", "|---|---|---|"]
    lines += [f"| {r.workdir} | {r.status} | {r.note} |" for r in unfinished]
  lines += ["", "val ppl / val loss: mean ± sample std over the finished seeds (validation split). Δ ppl: the point's "
            "perplexity minus its baseline's, seed by seed (the same seed gives both the same data order), mean ± "
            "sample std of those differences, how many seeds are lower, and the baseline's steps (equal FLOPs: "
            "the steps at which the baseline has used the point's planned training FLOPs). sightings / f-gram: "
            "training positions whose input embedding was an f-gram's (its longest match), over |V_f| (summary.json "
            "fgram_sightings; mean over seeds). train FLOPs: "
            "steps x tokens per step x training FLOPs per token (docs/METHODS.md 4). Parameters: resident on the "
            "accelerator at inference; training-only (A_f); offloaded table entries (|V_f| x d for SCONE)."]
  return "\n".join(lines) + "\n"


def write_table(out: str, rows: list[dict], runs: list[Run], axes=(), title: str = "Sweep") -> None:
  from scone_jax.files import atomic_write_json, atomic_write_text
  atomic_write_json(join(out, "table.json"), {
      "points": rows,
      "runs": [{"workdir": r.workdir, "status": r.status, "note": r.note, "coords": r.coords,
                "eval_perplexity": r.summary.get("eval_perplexity"), "eval_loss": r.summary.get("eval_loss")}
               for r in runs]}, indent=2)
  atomic_write_text(join(out, "table.md"), table_md(rows, runs, axes, title))


# ---- figures ------------------------------------------------------------------------------------


@dataclasses.dataclass
class Series:
  label: str
  x: list
  y: list
  err: list
  flops_band: list = dataclasses.field(default_factory=list)   # per x: (mean, std) of the equal-FLOPs baseline or None


@dataclasses.dataclass
class FigureData:
  """What one figure shows: SCONE series with seed error bars, baselines as bands."""
  name: str
  xlabel: str
  series: list[Series]
  bands: list[tuple[str, float, float]]    # equal-steps baselines: (label, mean, std)
  log_x: bool = False
  integer_x: bool = False
  title: str = ""


def nice_step(span: float) -> float:
  """1, 2 or 5 x 10^k: about five ticks over `span`."""
  raw = max(span, 1e-9) / 5
  base = 10 ** math.floor(math.log10(raw))
  return next(m * base for m in (1, 2, 5, 10) if m * base >= raw)


def y_limits(lows, highs) -> tuple[float, float]:
  """A y range that starts at a rounded value below the lowest point minus its error and ends
  above the highest plus its error: every point and band visible, differences not blown up (the
  range is at least 10% of the values' magnitude)."""
  lo, hi = min(lows), max(highs)
  span = max(hi - lo, 0.1 * abs(hi))
  step = nice_step(span)
  bottom = math.floor((lo - 0.1 * span) / step) * step
  top = math.ceil((hi + 0.1 * span) / step) * step
  if lo >= 0 > bottom:
    bottom = 0.0
  return bottom, top


def _label_of(row: dict, keys: list[str], names: dict) -> str:
  return ", ".join(f"{names.get(k, k)} {row.get(k):,}" if isinstance(row.get(k), int) else f"{names.get(k, k)} {row.get(k)}"
                   for k in keys) or "SCONE"


NAMES = {"fgram_size": "|V_f|", "max_n": "K", "af_layers": "A_f layers", "af_width": "d_f", "steps": "steps"}


def figure_data(rows: list[dict], axes=()) -> list[FigureData]:
  """The sweep's three figures: perplexity vs |V_f| (log x) per A_f size, vs A_f parameters per
  |V_f|, vs K; each from the points with results, baselines matched from the accounting."""
  points = [r for r in rows if not r["baseline"] and "perplexity" in r]
  baselines = [r for r in rows if r["baseline"] and "perplexity" in r]
  other = [a for a in axes if not a.startswith("FgramConfig.")]
  specs = [("ppl_vs_fgrams", "fgram_size", "|V_f| (f-grams)", True, False),
           ("ppl_vs_af_params", "training_params", "A_f parameters (training-only)", False, False),
           ("ppl_vs_k", "max_n", "K (longest f-gram)", False, True)]
  figures = []
  for name, x_key, xlabel, log_x, integer_x in specs:
    varying = [k for k in ("fgram_size", "max_n", "af_layers", "af_width", "steps", *other)
               if len({repr(p.get(k)) for p in points}) > 1]
    if x_key == "training_params":   # A_f size is the x: its depth and width are not series keys
      keys = [k for k in varying if k not in ("af_layers", "af_width")]
    else:
      keys = [k for k in varying if k != x_key]
    groups: dict[tuple, list[dict]] = {}
    for p in points:
      groups.setdefault(tuple(repr(p.get(k)) for k in keys), []).append(p)
    series = []
    for group in groups.values():
      group = sorted(group, key=lambda p: p[x_key])
      s = Series(_label_of(group[0], keys, NAMES), [p[x_key] for p in group], [p["perplexity"] for p in group],
                 [p["perplexity_std"] for p in group])
      for p in group:
        b = matching_baselines(p, baselines, axes)["equal_flops"]
        s.flops_band.append((b["perplexity"], b["perplexity_std"]) if b else None)
      series.append(s)
    bands = {}
    for p in points:
      b = matching_baselines(p, baselines, axes)["equal_steps"]
      if b is not None:
        label = f"baseline, {b['steps']:,} steps" + (f" ({_label_of(b, other, {})})" if other else "")
        bands[label] = (label, b["perplexity"], b["perplexity_std"])
    if not points:
      bands = {f"baseline, {b['steps']:,} steps": (f"baseline, {b['steps']:,} steps", b["perplexity"],
                                                   b["perplexity_std"]) for b in baselines}
    figures.append(FigureData(name, xlabel, series, list(bands.values()), log_x, integer_x, "SCONE sweep"))
  return figures


def _tick_label(v) -> str:
  v = float(v)
  if v == int(v) and abs(v) < 1e5:
    return f"{int(v):,}"
  for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
    if abs(v) >= div:
      return f"{v / div:.3g}{unit}"
  return f"{v:g}"


def draw(fig_data: FigureData):
  """The matplotlib Figure of one FigureData (the caller saves and closes it)."""
  plt = pyplot()
  from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator
  fig, ax = plt.subplots(figsize=(6, 4.2))
  lows, highs, xs = [], [], []
  for i, (label, mean, std) in enumerate(fig_data.bands):
    color = "k" if i == 0 else f"C{7 + i % 3}"
    ax.axhline(mean, color=color, linestyle="--", linewidth=1, label=f"{label} (mean ± std)")
    ax.axhspan(mean - std, mean + std, color=color, alpha=0.12)
    lows.append(mean - std)
    highs.append(mean + std)
  shared = len({repr(s.flops_band) for s in fig_data.series}) == 1 and len(fig_data.series) > 1
  drawn = set()
  for i, s in enumerate(fig_data.series):
    color = f"C{i % 7}"
    ax.errorbar(s.x, s.y, yerr=s.err, marker="o", capsize=3, color=color, label=s.label)
    lows += [y - e for y, e in zip(s.y, s.err)]
    highs += [y + e for y, e in zip(s.y, s.err)]
    xs += list(s.x)
    matched = [(x, b) for x, b in zip(s.x, s.flops_band) if b is not None]
    same = bool(fig_data.bands) and all(b == tuple(fig_data.bands[0][1:]) for _, b in matched)
    if matched and not same and repr(matched) not in drawn:   # equal-FLOPs baselines unlike the equal-steps one
      drawn.add(repr(matched))
      if shared:
        color = "0.35"
      bx = [x for x, _ in matched]
      bm = [b[0] for _, b in matched]
      bs = [b[1] for _, b in matched]
      label = "baseline at equal FLOPs" if shared else f"baseline at equal FLOPs ({s.label})"
      ax.plot(bx, bm, linestyle=":", color=color, label=f"{label} (mean ± std)")
      ax.fill_between(bx, [m - d for m, d in zip(bm, bs)], [m + d for m, d in zip(bm, bs)], color=color, alpha=0.1)
      lows += [m - d for m, d in zip(bm, bs)]
      highs += [m + d for m, d in zip(bm, bs)]
  if lows:
    ax.set_ylim(*y_limits(lows, highs))
  if fig_data.log_x:
    ax.set_xscale("log")
  ticks = sorted(set(xs))
  if ticks:
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _tick_label(v) if not fig_data.integer_x else f"{int(round(v))}"))
    if len(ticks) == 1:
      ax.set_xlim(ticks[0] * 0.5, ticks[0] * 1.5) if fig_data.log_x else ax.set_xlim(ticks[0] - 1, ticks[0] + 1)
  ax.set_xlabel(fig_data.xlabel)
  ax.set_ylabel("validation perplexity (lower is better)")
  ax.set_title(fig_data.title)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def write_figures(out: str, rows: list[dict], axes=()) -> list[FigureData]:
  plt = pyplot()
  figures = figure_data(rows, axes)
  for f in figures:
    fig = draw(f)
    fig.savefig(join(out, f.name + ".png"), dpi=120)
    plt.close(fig)
  return figures


def collect(out: str, workdirs, axes=(), title: str = "Sweep") -> tuple[list[dict], list[Run]]:
  """Reads every run, writes OUT/table.md, table.json and the figures; returns (points, runs)."""
  runs = read_runs(workdirs, axes)
  if not any(r.status == "done" for r in runs):
    raise UserError(f"none of the {len(runs)} runs of {out!r} has finished (no RUN/summary.json): "
                    "run the sweep first (without --collect_only)")
  rows = aggregate(runs)
  add_deltas(rows, axes)
  os.makedirs(out, exist_ok=True)
  write_table(out, rows, runs, axes, title)
  write_figures(out, rows, axes)
  return rows, runs
