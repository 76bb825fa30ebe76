"""ScaleNet: scale aggregation networks with data-driven neuron allocation (CVPR 2019).

Public API::

    import scalenet
    model = scalenet.create_model("scalenet50", checkpoint="scalenet50.pth")
    structure = scalenet.Structure.load("my_structure.json")
    structure.macs(), structure.params()
    result = scalenet.allocate(build_data("my_images/"), width_mult=1.0)  # from scalenet.data import build_data
    result.structure, result.scores

The allocation's parts (importances, budgets, selectors) live in :mod:`scalenet.allocation`.
Importing the package registers the ScaleNets with timm (``timm.create_model("scalenet50")``).
"""

from .factory import create_model, list_models
from .structure import Structure
from . import models  # noqa: F401  (registers the timm models)
from .allocation import allocate
from .fuse import fuse

__all__ = ["create_model", "list_models", "Structure", "allocate", "fuse"]
__version__ = "0.1.0"
