"""Command modules whose wiring spans stages (above serve/ in the import order). Commands that
belong to one stage live in that stage's package (scone_jax/cli.py lists them all)."""
