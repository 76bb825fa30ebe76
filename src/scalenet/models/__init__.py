"""Model families. Importing this package registers the ScaleNets with timm."""

from .scalenet import ScaleNet, SABottleneck, checkpoint_filter_fn, upsample_to

__all__ = ["ScaleNet", "SABottleneck", "checkpoint_filter_fn", "upsample_to"]
