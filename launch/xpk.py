"""Train as an xpk workload on a GKE cluster of TPU slices; also delete and list workloads.

  create  `xpk workload create` running `scone-jax train ...` in every pod of NUM_SLICES slices
  delete  `xpk workload delete` of one workload
  list    `xpk workload list` on the cluster (optionally one workload)

The image must provide scone_jax: either your own image (--docker_image), or a base image to
which xpk adds --script_dir (default: the current directory, i.e. this checkout), installed with
`pip install '.[tpu]'` when the pod starts (--pip_install changes that). Multi-host and multi-slice settings are found by `scone-jax train` from the
environment GKE gives each pod, so no coordinator flags are passed.

  python -m launch.xpk create --cluster my-v5p --workload scone-1b --tpu_type v5p-256 \\
      --num_slices 2 --docker_image gcr.io/my-project/scone_jax:latest \\
      --gin_file experiments/runs/MY_RUN.gin --workdir gs://my-bucket/runs/scone_1b --dry-run
"""
from __future__ import annotations

import argparse
import re
import shlex
import sys
from collections.abc import Sequence

from launch import common
from launch.common import Step, TrainRun, command
from scone_jax.errors import UserError

PROG = "python -m launch.xpk"
# xpk's own rule for workload names (they become Kubernetes object names).
_WORKLOAD_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_WORKLOAD_NAME = 40


def check_workload_name(name: str) -> str:
  if not _WORKLOAD_NAME.fullmatch(name) or len(name) > MAX_WORKLOAD_NAME:
    raise UserError(f"workload name {name!r} must be lowercase letters, digits and '-', start "
                    f"with a letter, end with a letter or digit, at most {MAX_WORKLOAD_NAME} "
                    "characters; pass another --workload")
  return name


def _where(args: argparse.Namespace) -> list[str]:
  return ([f"--project={args.project}"] if args.project else []) + (
      [f"--zone={args.zone}"] if args.zone else [])


def container_command(run: TrainRun, pip_install: str | None) -> str:
  """The shell text each pod runs: optionally install the package, then train."""
  train = shlex.join(run.argv())
  if not pip_install:
    return train
  return f"python3 -m pip install {shlex.quote(pip_install)} && {train}"


def create_steps(args: argparse.Namespace, run: TrainRun, workload: str) -> list[Step]:
  check_workload_name(workload)
  if args.docker_image:
    image = [f"--docker-image={args.docker_image}"]
  else:
    image = [f"--base-docker-image={args.base_docker_image}", f"--script-dir={args.script_dir}"]
  flags = [f"--cluster={args.cluster}", f"--workload={workload}", f"--tpu-type={args.tpu_type}",
           f"--num-slices={args.num_slices}", *image, *_where(args)]
  flags += [f"--env={name}={value}" for name, value in common.parse_env(args.env)]
  flags += [f"--priority={args.priority}"] if args.priority else []
  flags += [f"--max-restarts={args.max_restarts}"] if args.max_restarts else []
  # A bare base image has no scone_jax: install the copied --script_dir unless told otherwise.
  pip_install = args.pip_install
  if pip_install is None and not args.docker_image:
    pip_install = ".[tpu]"
  return [command("xpk", "workload", "create", *flags, "--command",
                  container_command(run, pip_install))]


def delete_steps(args: argparse.Namespace) -> list[Step]:
  check_workload_name(args.workload)
  force = ["--force"] if args.force else []
  return [command("xpk", "workload", "delete", f"--cluster={args.cluster}",
                  f"--workload={args.workload}", *_where(args), *force)]


def list_steps(args: argparse.Namespace) -> list[Step]:
  only = [f"--filter-by-job={args.workload}"] if args.workload else []
  return [command("xpk", "workload", "list", f"--cluster={args.cluster}", *_where(args), *only)]


# ---- flags ------------------------------------------------------------------------------------

def _add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--cluster", required=True, help="the xpk (GKE) cluster")
  parser.add_argument("--project", help="GCP project (default: gcloud's configured project)")
  parser.add_argument("--zone", help="zone of the cluster (default: gcloud's configured zone)")


def add_workload_arguments(parser: argparse.ArgumentParser, workload_help: str) -> None:
  """Flags of `workload create` besides the train flags (shared with launch.sweep)."""
  _add_cluster_arguments(parser)
  parser.add_argument("--workload", required=True, help=workload_help)
  parser.add_argument("--tpu_type", required=True, help="slice type, e.g. v5p-256, v6e-256")
  parser.add_argument("--num_slices", type=int, default=1, help="slices (default: 1)")
  image = parser.add_mutually_exclusive_group()
  image.add_argument("--docker_image", help="an image that already has scone_jax installed")
  image.add_argument("--base_docker_image", default="python:3.11-slim",
                     help="base image xpk adds --script_dir to (default: %(default)s)")
  parser.add_argument("--script_dir", default=".",
                      help="directory xpk copies into the base image (default: %(default)s)")
  parser.add_argument("--pip_install", metavar="SPEC",
                      help="pip-install SPEC in the pod before training (default with a base "
                      "image: '.[tpu]', i.e. the copied --script_dir; '' for nothing)")
  common.add_env_argument(parser)
  parser.add_argument("--priority", choices=["very-low", "low", "medium", "high", "very-high"],
                      help="xpk priority (default: xpk's)")
  parser.add_argument("--max_restarts", type=int, help="restarts of the JobSet on failure")


def build_parser() -> argparse.ArgumentParser:
  parser = common.new_parser(PROG, __doc__)
  sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
  create = sub.add_parser("create", help="run scone-jax train as a workload", allow_abbrev=False)
  add_workload_arguments(create, "workload name (lowercase, digits, '-'; at most 40)")
  common.add_train_arguments(create)
  delete = sub.add_parser("delete", help="delete a workload", allow_abbrev=False)
  _add_cluster_arguments(delete)
  delete.add_argument("--workload", required=True, help="workload to delete")
  delete.add_argument("--force", action="store_true", help="do not ask for confirmation")
  listing = sub.add_parser("list", help="list workloads", allow_abbrev=False)
  _add_cluster_arguments(listing)
  listing.add_argument("--workload", help="only this workload")
  for leaf in (create, delete, listing):
    common.add_dry_run_argument(leaf)
  return parser


def plan(args: argparse.Namespace) -> list[Step]:
  if args.action == "create":
    return create_steps(args, common.train_run(args), args.workload)
  if args.action == "delete":
    return delete_steps(args)
  return list_steps(args)


def main(argv: Sequence[str] | None = None) -> int:
  return common.run_main(PROG, build_parser(), plan, argv)


if __name__ == "__main__":
  sys.exit(main())
