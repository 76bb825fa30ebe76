"""ScaleNet: scale aggregation networks with data-driven neuron allocation (CVPR 2019).

Public API::

    import scalenet
    model = scalenet.create_model("scalenet50", checkpoint="scalenet50.pth")
    structure = scalenet.Structure.load("my_structure.json")
    structure.macs(), structure.params()
    result = scalenet.allocate(build_data("my_images/"), WidthBudget(1.0))  # scalenet.data, scalenet.allocation
    result.structure, result.scores

The allocation's parts (importances, budgets, selectors, rounding, combination) live in
:mod:`scalenet.allocation`, training in :mod:`scalenet.training`.
Importing the package registers the ScaleNets with timm (``timm.create_model("scalenet50")``).
"""

from .factory import create_model, list_models
from .structure import Structure
from . import models  # noqa: F401  (registers the timm models)
from .allocation import allocate
from .fuse import fuse

__all__ = ["create_model", "list_models", "Structure", "allocate", "fuse"]
__version__ = "0.1.0"
