"""Moves between sweeps that let coordinate ascent leave local optima.

Each move is a :class:`Move`: a name, an ``attempt(be, prob, state, n_threads) -> bool`` and
when it runs.  An attempt proposes a new state, re-optimises the cheap factors (everything but
the cells, so no pass over the cells is needed) and keeps the proposal only if the ELBO rises;
otherwise it puts the old state back.  So no move can lower the ELBO.  (The two moves that
learn a setting of the objective, the x prior's width and the donor concentration, say in
their docstrings how they keep the trace honest.)  The fit logs every move that fired, with
its ELBO gain, in ``NestedAtomsModel.moves_``, and times each in ``timings_``.

One module per move:

* ``merge_atoms``: fold one cell atom into another.
* ``sort``: renumber clusters by decreasing size.
* ``agglomerate``: merge many atoms at once, at the best level of a greedy agglomeration.
* ``split_atoms``: cut an atom in two by 2-means and let its cells re-choose;
  ``split_atoms_batched`` does it with the cells in several batches (in memory or on dask).
* ``group_search``: search the group partition at fixed cells.
* ``group_prior_scale``: the x prior's width that maximises the ELBO for the partition reached.
* ``donor_concentration``: the donors' concentration around their cluster's composition.
* ``merge_groups``: fold one group cluster into another (not in the default schedule: the
  group search proposes every merge it would, and more).

Scheduling (``Move.when``): cheap moves run after every sweep; costly ones (the
agglomeration, the splits, the group search, the two learned settings) when the sweeps have
converged, or every ``_STALL_PERIOD`` sweeps of a run that creeps without converging, and the
sweeps resume if one of them fired.  The donor concentration is learned only in a round where
no costly move before it changed the state (``Move.reads_settled_partition``), so it reads a
partition the sweeps have settled on, not a search's proposal before they refine it.
"""

from __future__ import annotations

from ._base import AT_CONVERGENCE, EVERY_SWEEP, Move, refresh_without_cells
from .agglomerate import agglomerate_cell_atoms
from .donor_concentration import learn_donor_variation
from .group_search import adjusted_partition_equal, optimise_groups, search_group_partition
from .merge_atoms import merge_cell_atoms
from .merge_groups import merge_group_clusters
from .group_prior_scale import learn_group_prior_scale
from .sort import sort_clusters
from .split_atoms import split_cell_atoms
from .split_atoms_batched import split_cell_atoms_batched

__all__ = ["Move", "EVERY_SWEEP", "AT_CONVERGENCE", "DEFAULT_MOVES", "move_named", "moves_for",
           "BATCHED_MOVES",
           "sort_clusters", "merge_group_clusters", "merge_cell_atoms", "agglomerate_cell_atoms",
           "split_cell_atoms", "split_cell_atoms_batched", "search_group_partition",
           "learn_group_prior_scale", "learn_donor_variation", "refresh_without_cells",
           "optimise_groups",
           "adjusted_partition_equal"]

# The default schedule, in the order the moves are tried.  The donor concentration is learned
# last, on the partition the search and the width have refined: learned first, at a
# convergence where two groups were still merged, it read their difference as donor variation
# and kept them merged (NAM-exact data, 2 of 7 settings).
DEFAULT_MOVES = (
    Move("merge_cell_atoms", merge_cell_atoms, EVERY_SWEEP, knows_elbo=True),
    Move("sort_clusters", sort_clusters, EVERY_SWEEP, knows_elbo=True),
    Move("agglomerate_cell_atoms", agglomerate_cell_atoms, AT_CONVERGENCE, knows_elbo=True),
    Move("split_cell_atoms", split_cell_atoms, AT_CONVERGENCE, knows_elbo=True),
    Move("search_group_partition", search_group_partition, AT_CONVERGENCE, knows_elbo=True),
    Move("learn_group_prior_scale", learn_group_prior_scale, AT_CONVERGENCE),
    Move("learn_donor_variation", learn_donor_variation, AT_CONVERGENCE,
         reads_settled_partition=True),
)


# The moves whose one-batch version needs the rows of xi of all cells in one place (the split
# cuts an atom's cells by 2-means on y and re-runs their cell step), and the version that runs
# with the cells in more than one batch (``_batches``), in memory as on dask, with the same
# bits (docs/scale-out.md); the merges dispatch on the batches themselves.
BATCHED_MOVES = {"split_cell_atoms": split_cell_atoms_batched}


def moves_for(prob) -> tuple:
    """The fit's schedule for this problem: the default moves, with ``BATCHED_MOVES`` in place
    of their one-batch versions when the plan has more than one batch."""
    if prob.batches.n_batches == 1:
        return DEFAULT_MOVES
    return tuple(Move(m.name, BATCHED_MOVES[m.name], m.when, m.reads_settled_partition)
                 if m.name in BATCHED_MOVES else m for m in DEFAULT_MOVES)


def move_named(name: str) -> Move:
    """The default move called ``name``."""
    for move in DEFAULT_MOVES:
        if move.name == name:
            return move
    raise KeyError(f"no default move is called {name!r}; "
                   f"the default moves are {[m.name for m in DEFAULT_MOVES]}.")
