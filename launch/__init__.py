"""Launchers for `scone-jax train`: TPU VM slices (gcloud), GKE (xpk), SLURM, and grid sweeps.

Each module runs as `python -m launch.NAME --help`; every one has `--dry-run`, which prints the
exact commands it would execute, one per line, ready to paste into a shell. See launch/README.md.
"""
