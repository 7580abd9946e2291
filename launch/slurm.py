"""Train on a SLURM GPU cluster: render launch/slurm_job.sbatch and submit it with sbatch.

Two layouts:
  --process_per gpu   one process per GPU (srun --ntasks-per-node=GPUS); each task sees only
                      the SLURM_LOCALID-th GPU of its node
  --process_per node  one process per node that drives all local GPUs
In the job the coordinator is the first host of SLURM_JOB_NODELIST (`scontrol show hostnames`)
at --port, the process count is SLURM_NTASKS and each task's id is its SLURM_PROCID; they are
passed to `scone-jax train` as --coordinator_address, --num_processes and --process_id.

--dry-run prints the script as a here-document that writes it, then the sbatch command.

  python -m launch.slurm --nodes 4 --gpus_per_node 8 --partition gpu --time 24:00:00 \\
      --prelude 'source ~/scone/.venv/bin/activate' \\
      --gin_file experiments/runs/MY_RUN.gin --workdir /shared/runs/scone_1b --dry-run
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from collections.abc import Sequence

from launch import common
from launch.common import Step, TrainRun, WriteFile, command
from scone_jax.errors import UserError

PROG = "python -m launch.slurm"
TEMPLATE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_job.sbatch")
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
# Per task in --process_per gpu: keep only this task's GPU. If SLURM already narrowed
# CUDA_VISIBLE_DEVICES (a partial node), index into that list rather than the physical ids.
GPU_BINDING = """\
# >>> gpu: this task's GPU is the SLURM_LOCALID-th one visible on its node.
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a visible_gpus <<< "$CUDA_VISIBLE_DEVICES"
  export CUDA_VISIBLE_DEVICES="${visible_gpus[$SLURM_LOCALID]}"
else
  export CUDA_VISIBLE_DEVICES="$SLURM_LOCALID"
fi
# <<< gpu
"""


def render_template(template: str, values: dict[str, str]) -> str:
  """Replaces every {{name}} in one pass (values are not rescanned); all names must be used."""
  used = set(_PLACEHOLDER.findall(template))
  assert used == set(values), f"template names {sorted(used)} != values {sorted(values)}"
  return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def tasks_per_node(args: argparse.Namespace) -> int:
  return args.gpus_per_node if args.process_per == "gpu" else 1


def render_script(args: argparse.Namespace, run: TrainRun, job_name: str) -> str:
  """The sbatch script of one run."""
  if args.nodes < 1 or args.gpus_per_node < 1:
    raise UserError(f"--nodes {args.nodes} --gpus_per_node {args.gpus_per_node}: both must be "
                    "at least 1")
  directives = [f"--job-name={job_name}", f"--nodes={args.nodes}",
                f"--ntasks-per-node={tasks_per_node(args)}",
                f"--gpus-per-node={args.gpus_per_node}", f"--output={args.output}"]
  directives += [f"--cpus-per-task={args.cpus_per_task}"] if args.cpus_per_task else []
  directives += [f"--time={args.time}"] if args.time else []
  directives += [f"--partition={args.partition}"] if args.partition else []
  directives += [f"--account={args.account}"] if args.account else []
  for option in args.sbatch_option:
    if not option.startswith("--") or "\n" in option:
      raise UserError(f"--sbatch_option {option!r} must be one sbatch flag like --qos=high")
    directives.append(option)
  train_command = shlex.join(run.argv())
  assert "TASK" not in train_command.splitlines(), "train command would end the here-document"
  values = {
      "sbatch_directives": "\n".join(f"#SBATCH {d}" for d in directives),
      "prelude": "".join(line + "\n" for line in args.prelude),
      "port": str(args.port),
      "tasks_per_node": str(tasks_per_node(args)),
      "mem_fraction": shlex.quote(str(args.mem_fraction)),
      "env_exports": "".join(line + "\n" for line in common.shell_exports(
          common.parse_env(args.env))),
      "gpu_binding": GPU_BINDING if args.process_per == "gpu" else "",
      "train_command": train_command,
  }
  with open(TEMPLATE_PATH) as f:
    return render_template(f.read(), values)


def job_steps(args: argparse.Namespace, run: TrainRun, job_name: str) -> list[Step]:
  """Write the script, then submit it."""
  script_path = os.path.join(args.script_dir, f"{common.safe_name(job_name)}.sbatch")
  return [WriteFile(script_path, render_script(args, run, job_name)),
          command("sbatch", script_path)]


# ---- flags ------------------------------------------------------------------------------------

def add_job_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of a job besides the train flags (shared with launch.sweep --backend slurm)."""
  parser.add_argument("--job_name", default="scone", help="SLURM job name (default: %(default)s)")
  parser.add_argument("--nodes", type=int, default=1, help="nodes (default: %(default)s)")
  parser.add_argument("--gpus_per_node", type=int, default=8,
                      help="GPUs per node (default: %(default)s)")
  parser.add_argument("--process_per", choices=["gpu", "node"], default="gpu",
                      help="one process per GPU, or one per node driving all its GPUs "
                      "(default: %(default)s)")
  parser.add_argument("--port", type=int, default=12355,
                      help="coordinator port on the first host (default: %(default)s)")
  parser.add_argument("--partition", help="SLURM partition")
  parser.add_argument("--account", help="SLURM account")
  parser.add_argument("--time", help="time limit, e.g. 24:00:00")
  parser.add_argument("--cpus_per_task", type=int, help="CPUs per task")
  parser.add_argument("--output", default="%x-%j.out",
                      help="job log file pattern (default: %(default)s)")
  parser.add_argument("--sbatch_option", action="append", default=[], metavar="--FLAG=VALUE",
                      help="another #SBATCH line, e.g. --sbatch_option=--qos=high (repeatable)")
  parser.add_argument("--mem_fraction", type=float, default=0.9,
                      help="XLA_PYTHON_CLIENT_MEM_FRACTION (default: %(default)s)")
  common.add_env_argument(parser)
  parser.add_argument("--prelude", action="append", default=[], metavar="LINE",
                      help="a shell line run before training, e.g. 'module load cuda' or "
                      "'source .venv/bin/activate' (repeatable)")
  parser.add_argument("--script_dir", default="slurm_scripts",
                      help="where the rendered script is written (default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
  parser = common.new_parser(PROG, __doc__)
  add_job_arguments(parser)
  common.add_train_arguments(parser)
  common.add_dry_run_argument(parser)
  return parser


def plan(args: argparse.Namespace) -> list[Step]:
  return job_steps(args, common.train_run(args), args.job_name)


def main(argv: Sequence[str] | None = None) -> int:
  return common.run_main(PROG, build_parser(), plan, argv)


if __name__ == "__main__":
  sys.exit(main())
