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

from .compat import check_floors, check_import_order

check_floors()  # before anything that an older torch or timm than the floors would break
check_import_order()  # before torchvision and timm, which load Triton

from .factory import create_model, list_models  # noqa: E402
from .structure import Structure  # noqa: E402
from . import models  # noqa: F401  (registers the timm models)
from .allocation import allocate  # noqa: E402
from .fuse import fuse  # noqa: E402

__all__ = ["create_model", "list_models", "Structure", "allocate", "fuse"]
from .version import __version__  # noqa: E402
