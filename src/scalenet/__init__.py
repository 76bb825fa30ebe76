"""ScaleNet: scale aggregation networks with data-driven neuron allocation (CVPR 2019).

Public API::

    import scalenet
    model = scalenet.create_model("scalenet50", checkpoint="scalenet50.pth")
    structure = scalenet.Structure.load("my_structure.json")
    structure.macs(), structure.params()

Importing the package registers the ScaleNets with timm (``timm.create_model("scalenet50")``).
"""

from .factory import create_model, list_models
from .structure import Structure
from . import models  # noqa: F401  (registers the timm models)

__all__ = ["create_model", "list_models", "Structure"]
__version__ = "0.1.0"
