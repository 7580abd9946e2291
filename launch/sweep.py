"""`python -m launch.sweep`: an alias of `scone-jax sweep` (scone_jax/sweep.py), the one sweep.

Every flag is the command's own (`--axis NAME=V1,V2`, `--seeds`, `--baselines`, `--data`, `--out`,
`--backend local|tpu|xpk|slurm` with that launcher's flags, `--dry_run`, `--collect_only`); see
`python -m launch.sweep --help` and launch/README.md. The old `--grid NAME=[..]`, `--grid_file`
and `--workdir` flags are gone: `--axis NAME=V1,V2` and `--out DIR`.

  python -m launch.sweep --gin_file models/tiny.gin --gin_file runs/cpu.gin --gin.FgramConfig.max_n=3 \\
      --axis FgramConfig.size=4096,16384 --axis FgramConfig.num_layers=1,2 --seeds 0,1 \\
      --data DATA --out SWEEP --backend tpu --name my-v5p --zone us-east5-a --dry_run
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from scone_jax import cli


def main(argv: Sequence[str] | None = None) -> int:
  return cli.main(["sweep", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
  sys.exit(main())
