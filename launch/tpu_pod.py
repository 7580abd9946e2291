"""Train on a Cloud TPU VM slice with gcloud: create or reuse it, install, run on every worker.

Subcommands (each with --dry-run):
  create  create the slice unless `describe` finds it (then it is reused)
  setup   copy the package to every worker and pip-install it (a wheel/sdist, this repo, or a spec)
  run     the same `scone-jax train ...` on all workers at once; each worker appends its output
          to LOG_DIR/RUN.log on its own disk and streams it here prefixed with its hostname
          (--detach: starts it under nohup and returns)
  logs    fetch every worker's LOG_DIR/RUN.log into LOCAL_DIR/RUN/<worker>.log
  delete  delete the slice
  up      create (or reuse), setup and run, in that order

Multi-host flags are not passed: on Cloud TPU `scone-jax train` finds the coordinator, process
count and process id itself. Remote commands run in the worker's login shell (bash).

  python -m launch.tpu_pod up --name my-v5p --zone us-east5-a --accelerator_type v5p-256 \\
      --repo . --gin_file experiments/runs/MY_RUN.gin --gin.TRAIN_STEPS=100000 \\
      --workdir gs://my-bucket/runs/scone_1b --dry-run
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Sequence

from launch import common
from launch.common import Step, TrainRun, command
from scone_jax.errors import UserError

PROG = "python -m launch.tpu_pod"
GCLOUD_TPU = ("gcloud", "compute", "tpus", "tpu-vm")
# The runtime (TPU software version) for JAX by accelerator family, from
# https://cloud.google.com/tpu/docs/runtimes; --version overrides it.
RUNTIME_BY_FAMILY = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5e": "v2-alpha-tpuv5-lite",
    "v4": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v2": "tpu-ubuntu2204-base",
}
_ACCELERATOR = re.compile(r"(v\d+[a-z]*)-(\d+)")
REMOTE_SOURCE_DIR = "scone_jax_src"  # where --repo is unpacked on each worker (under $HOME)
# Left out of the --repo tarball: VCS data, environments and run outputs.
TARBALL_EXCLUDES = (".git", ".venv", "__pycache__", "*.egg-info", ".pytest_cache",
                    ".hypothesis", "build", "runs", "demo_out")


def default_runtime(accelerator_type: str) -> str:
  """The JAX runtime version for e.g. 'v5p-256' (-> 'v2-alpha-tpuv5')."""
  match = _ACCELERATOR.fullmatch(accelerator_type)
  if not match:
    raise UserError(f"--accelerator_type {accelerator_type!r} is not of the form FAMILY-SIZE; "
                    "write e.g. v5p-256 or v6e-256")
  family = match.group(1)
  if family not in RUNTIME_BY_FAMILY:
    raise UserError(f"no default runtime for TPU family {family!r}; pass --version "
                    "(see `gcloud compute tpus tpu-vm versions list`)")
  return RUNTIME_BY_FAMILY[family]


def _where(args: argparse.Namespace) -> list[str]:
  return [f"--zone={args.zone}"] + ([f"--project={args.project}"] if args.project else [])


def _ssh_all(args: argparse.Namespace, remote: str, *extra: str) -> Step:
  """One command run on every worker of the slice at once."""
  return command(*GCLOUD_TPU, "ssh", args.name, *_where(args), "--worker=all",
                 "--command", remote, *extra)


def create_steps(args: argparse.Namespace) -> list[Step]:
  version = args.version or default_runtime(args.accelerator_type)
  flags = [f"--accelerator-type={args.accelerator_type}", f"--version={version}"]
  flags += ["--spot"] if args.spot else []
  flags += ["--preemptible"] if args.preemptible else []
  flags += ["--reserved"] if args.reserved else []
  describe = [*GCLOUD_TPU, "describe", args.name, *_where(args)]
  return [command(*GCLOUD_TPU, "create", args.name, *_where(args), *flags, unless=describe)]


def _pip_install(args: argparse.Namespace, target: str) -> str:
  return f"{shlex.quote(args.python)} -m pip install --upgrade {shlex.quote(target)}"


def setup_steps(args: argparse.Namespace) -> list[Step]:
  """Gets the package onto every worker and installs it (with --extras)."""
  extras = f"[{args.extras}]" if args.extras else ""
  if args.pip_spec:
    return [_ssh_all(args, _pip_install(args, args.pip_spec))]
  scp = (*GCLOUD_TPU, "scp")
  if args.package:
    if not os.path.isfile(args.package):
      raise UserError(f"--package {args.package}: no such file; build one with "
                      "`python -m build` or `pip wheel --no-deps -w dist .`")
    name = os.path.basename(args.package)
    return [command(*scp, args.package, f"{args.name}:", *_where(args), "--worker=all"),
            _ssh_all(args, _pip_install(args, f"./{name}{extras}"))]
  if not os.path.isfile(os.path.join(args.repo, "setup.py")):
    raise UserError(f"--repo {args.repo}: no setup.py there; point it at the scone_jax checkout")
  tarball = os.path.join(tempfile.gettempdir(), f"{REMOTE_SOURCE_DIR}.tar.gz")
  excludes = [f"--exclude={pattern}" for pattern in TARBALL_EXCLUDES]
  unpack = " && ".join([
      f"rm -rf {REMOTE_SOURCE_DIR}", f"mkdir -p {REMOTE_SOURCE_DIR}",
      f"tar -xzf {REMOTE_SOURCE_DIR}.tar.gz -C {REMOTE_SOURCE_DIR}",
      _pip_install(args, f"./{REMOTE_SOURCE_DIR}{extras}")])
  return [command("tar", "-czf", tarball, *excludes, "-C", args.repo, "."),
          command(*scp, tarball, f"{args.name}:", *_where(args), "--worker=all"),
          _ssh_all(args, unpack)]


def remote_train_command(run: TrainRun, env: Sequence[tuple[str, str]], log_dir: str,
                         run_name: str, detach: bool = False) -> str:
  """The shell text each worker runs: env, then train appending to LOG_DIR/RUN.log.

  Attached, the output is also streamed back with a `[hostname] ` prefix and ssh returns when
  training ends; detached, training runs under nohup and ssh returns at once.
  """
  log_file = f"{shlex.quote(log_dir)}/{shlex.quote(run_name + '.log')}"
  train = shlex.join(run.argv())
  if detach:
    # All three descriptors redirected, or ssh would wait for the background job.
    launch = f"(nohup {train} >> {log_file} 2>&1 < /dev/null &)"
  else:
    launch = f"{train} 2>&1 | tee -a {log_file} | sed -u \"s/^/[$(hostname)] /\""
  return " && ".join([
      "set -o pipefail",  # the pipeline's status is scone-jax's, not sed's
      'export PATH="$HOME/.local/bin:$PATH"',  # where `pip install --user` puts scone-jax
      *common.shell_exports(env),
      f"mkdir -p {shlex.quote(log_dir)}",
      launch,
  ])


PASSED_THROUGH = ("LIBTPU_INIT_ARGS",)   # the launching shell's TPU runtime flags reach every worker


def run_steps(args: argparse.Namespace, run: TrainRun, run_name: str) -> list[Step]:
  env = common.parse_env(args.env)
  given = {name for name, _ in env}
  env += [(name, os.environ[name]) for name in PASSED_THROUGH if name in os.environ and name not in given]
  remote = remote_train_command(run, env, args.log_dir, run_name, args.detach)
  return [_ssh_all(args, remote)]


def logs_steps(args: argparse.Namespace) -> list[Step]:
  pattern = shlex.quote(f"{args.run_name}.log") if args.run_name else "*.log"
  local = os.path.join(args.local_dir, args.run_name or "all")
  # gcloud writes each worker's output to LOCAL/<worker>.log; the directory must exist.
  return [command("mkdir", "-p", local),
          _ssh_all(args, f"cat {shlex.quote(args.log_dir)}/{pattern}",
                   f"--output-directory={local}")]


def delete_steps(args: argparse.Namespace) -> list[Step]:
  return [command(*GCLOUD_TPU, "delete", args.name, *_where(args), "--quiet")]


# ---- flags ------------------------------------------------------------------------------------

def add_tpu_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--name", required=True, help="TPU VM name")
  parser.add_argument("--zone", required=True, help="zone of the TPU, e.g. us-east5-a")
  parser.add_argument("--project", help="GCP project (default: gcloud's configured project)")


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
  """Flags of a run besides the train flags (shared with launch.sweep --backend tpu)."""
  common.add_env_argument(parser)
  parser.add_argument("--log_dir", default="scone_logs",
                      help="log directory on each worker, relative to $HOME (default: %(default)s)")
  parser.add_argument("--detach", action="store_true",
                      help="start training under nohup and return; fetch progress with `logs`")


def _add_create_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--accelerator_type", required=True, help="e.g. v5p-256, v6e-256")
  parser.add_argument("--version", help="TPU runtime; default from the accelerator family "
                      f"({', '.join(f'{k}: {v}' for k, v in RUNTIME_BY_FAMILY.items())})")
  capacity = parser.add_mutually_exclusive_group()
  capacity.add_argument("--spot", action="store_true", help="spot capacity")
  capacity.add_argument("--preemptible", action="store_true", help="preemptible capacity")
  parser.add_argument("--reserved", action="store_true", help="use the project's reservation")


def _add_setup_arguments(parser: argparse.ArgumentParser) -> None:
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--package", help="a built wheel or sdist to copy to every worker")
  source.add_argument("--repo", help="a scone_jax checkout to tar, copy and install")
  source.add_argument("--pip_spec", help="a pip requirement each worker installs, e.g. "
                      "'scone_jax[tpu] @ git+https://github.com/ORG/scone_jax'")
  parser.add_argument("--extras", default="tpu", help="extras for --package/--repo "
                      "(default: %(default)s; '' for none)")
  parser.add_argument("--python", default="python3", help="python on the workers")


def build_parser() -> argparse.ArgumentParser:
  parser = common.new_parser(PROG, __doc__)
  sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
  specs = {
      "create": ("create the TPU VM, or reuse it if it exists", [_add_create_arguments]),
      "setup": ("install the package on every worker", [_add_setup_arguments]),
      "run": ("run scone-jax train on all workers", [common.add_train_arguments,
                                                     add_run_arguments]),
      "logs": ("fetch each worker's log", [_add_logs_arguments]),
      "delete": ("delete the TPU VM", []),
      "up": ("create (or reuse), setup, run", [_add_create_arguments, _add_setup_arguments,
                                               common.add_train_arguments, add_run_arguments]),
  }
  for action, (help_text, adders) in specs.items():
    leaf = sub.add_parser(action, help=help_text, description=help_text, allow_abbrev=False)
    add_tpu_arguments(leaf)
    for add in adders:
      add(leaf)
    common.add_dry_run_argument(leaf)
  return parser


def _add_logs_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--run_name", help="the run whose log to fetch (default: every log)")
  parser.add_argument("--log_dir", default="scone_logs", help="log directory on the workers")
  parser.add_argument("--local_dir", default="tpu_logs",
                      help="where logs land: LOCAL_DIR/RUN/<worker>.log (default: %(default)s)")


def plan(args: argparse.Namespace) -> list[Step]:
  if args.action == "create":
    return create_steps(args)
  if args.action == "setup":
    return setup_steps(args)
  if args.action == "logs":
    return logs_steps(args)
  if args.action == "delete":
    return delete_steps(args)
  run = common.train_run(args)
  steps = run_steps(args, run, common.last_component(run.workdir))
  if args.action == "up":
    steps = create_steps(args) + setup_steps(args) + steps
  return steps


def main(argv: Sequence[str] | None = None) -> int:
  return common.run_main(PROG, build_parser(), plan, argv)


if __name__ == "__main__":
  sys.exit(main())
