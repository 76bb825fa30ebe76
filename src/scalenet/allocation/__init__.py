"""Data-driven neuron allocation (paper Sec. 3.2, Algorithm 1), in pieces that can be swapped.

1. A *supernet* (the paper's "seed network") with abundant, uniform neurons per scale is
   trained on the task's data (:func:`supernet_structure`; optionally with a :class:`BNScaleL1`
   regulariser). "Seed" means a random seed only.
2. An *importance* scores every output neuron of every SA branch (:class:`BNScale`: its BN
   scale |gamma|), normalised per block. At selection the scores may be divided by each
   neuron's cost under the budget to the power ``alpha`` (:func:`weigh_by_cost`).
3. A *selector* keeps neurons under a *budget* and counts them per scale, which gives each
   block's row ``[C_1, C_2, C_4, C_7, side]``. Budgets: :class:`WidthBudget` (a multiple of
   the ResNet width per block) or :class:`MacsBudget` (the network's multiply-adds).
   Selectors: :func:`select_per_block` (the paper: the top neurons of each block) or
   :func:`select_global` (all blocks' neurons ranked together, network-slimming style, so the
   budget can move between blocks). Every block keeps at least one neuron; a scale may end up
   with none.

A network's MACs are linear in the kept neurons (:meth:`Structure.neuron_macs`): each neuron
costs its branch conv plus its column of the 1x1 conv after the concatenation; everything
else does not depend on the allocation (:class:`MacsCost`).

The package, one concept a file:

- :mod:`.importance`: scores (:class:`BNScale`, :class:`BNScaleL1`);
- :mod:`.budgets`: budgets and cost models (:meth:`WidthBudget.bind` gives the
  :class:`BoundBudget` the selection works with);
- :mod:`.select`: the selectors and the weighing of scores by cost (``alpha``);
- :mod:`.rounding`: branches rounded to a multiple of some neurons;
- :mod:`.combine`: several supernets' scores or allocations combined;
- :mod:`.pipeline`: supernet structure, :func:`allocate`, :func:`select_runs`, the result and its files;
- :mod:`.supernets`: supernets as ordinary training runs, scored from their checkpoints.
"""

from .budgets import (
    TARGET_BUDGETS, Budget, BoundBudget, MacsCost, LatencyBudget, LatencyCost, MacsBudget, WidthBudget, budget_from,
    minimum_macs,
)
from .combine import COMBINES, combine_mean, combine_union
from .importance import NORMALIZERS, BlockScores, BNScale, BNScaleL1, Importance, Neuron, normalize, unweigh
from .pipeline import (
    DEFAULT_COMBINE, DEFAULT_REPEATS, SUPERNET_IMAGES, AllocationResult, Selection, SupernetRun, SupernetSettings,
    allocate, default_layout, load_runs, select_runs, supernet_epochs, supernet_for, supernet_structure,
)
from .records import RENAMED_KEYS, SIDECAR_VERSION, current_keys
from .rounding import multiple_pool, round_channels
from .select import SELECTORS, check_alpha, select, select_global, select_per_block, weigh_by_cost
from .supernets import load_supernet_runs, runs_dir_for, score_run, supernet_run_dirs

__all__ = [
    "BlockScores", "Importance", "BNScale", "NORMALIZERS", "normalize", "BNScaleL1", "unweigh",
    "WidthBudget", "MacsBudget", "LatencyBudget", "TARGET_BUDGETS", "Budget", "BoundBudget", "budget_from",
    "MacsCost", "LatencyCost", "minimum_macs",
    "weigh_by_cost", "check_alpha", "select_per_block", "select_global", "SELECTORS", "select",
    "round_channels", "multiple_pool", "combine_union", "combine_mean", "COMBINES",
    "DEFAULT_REPEATS", "DEFAULT_COMBINE", "SUPERNET_IMAGES", "supernet_epochs", "SupernetSettings", "Selection",
    "SupernetRun", "AllocationResult", "supernet_structure", "supernet_for", "allocate", "default_layout", "load_runs",
    "select_runs", "SIDECAR_VERSION", "RENAMED_KEYS", "current_keys",
    "score_run", "load_supernet_runs", "supernet_run_dirs", "runs_dir_for",
]
