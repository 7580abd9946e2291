"""Beam's DaskRunner with every stage at most --dask_npartitions partitions (why:
scone_jax.fgram.beam_runner). `--beam_args='--runner=DaskRunner ...'` names this class."""
from __future__ import annotations

from apache_beam.runners.dask import dask_runner, overrides


class DaskRunner(dask_runner.DaskRunner):
  """Beam's DaskRunner; a Flatten with more than --dask_npartitions partitions is repartitioned
  down to that many (neighbouring partitions concatenated, no shuffle)."""

  @staticmethod
  def to_dask_bag_visitor(bag_kwargs=None):
    visitor = dask_runner.DaskRunner.to_dask_bag_visitor(bag_kwargs)
    limit = (bag_kwargs or {}).get("npartitions")
    translate = visitor.visit_transform

    def visit_transform(node):
      translate(node)
      bag = visitor.bags.get(node)
      if limit and isinstance(node.transform, overrides._Flatten) and bag.npartitions > limit:
        visitor.bags[node] = bag.repartition(npartitions=limit)

    visitor.visit_transform = visit_transform
    return visitor
