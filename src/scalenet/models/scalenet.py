"""ScaleNet: ResNet-v1 bottleneck networks whose 3x3 convs are scale aggregation blocks.

Li, Kuang, Chen, Zhang, "Data-Driven Neuron Allocation for Scale Aggregation Networks",
CVPR 2019 (arXiv:1904.09460).

The family follows timm's layout: one block class (:class:`SABottleneck`), one network
skeleton (:class:`ScaleNet`) and small registered builders. Parameter names follow the
original release (``layerN.M.conv2.I`` / ``bn2.I`` per branch position ``I``), so its
weight files load unchanged.
"""

import dataclasses
import enum
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_notrace_module  # timm.layers has it only from 1.0.17
from timm.models import build_model_with_cfg, checkpoint_seq, clean_state_dict, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from ..compat import create_classifier
from ..devices import check_memory
from ..errors import SettingError
from ..structure import STEMS, BlockSpec, Structure, published_names

__all__ = [
    "SABottleneck", "ScaleNet", "branch_input", "upsample_to", "replicates", "replicated_bn", "checkpoint_filter_fn",
    "Upsampling", "FULL", "NEAREST", "BILINEAR",
]


class Upsampling(enum.Enum):
    """How a branch's output returns to the block's resolution (see :func:`branch_input`)."""

    FULL = 0  # scale 1: no upsampling
    NEAREST = 1  # an exact replication: per-pixel work may run before it
    BILINEAR = 2


FULL, NEAREST, BILINEAR = Upsampling.FULL, Upsampling.NEAREST, Upsampling.BILINEAR


def upsample_to(x: torch.Tensor, size: List[int]) -> torch.Tensor:
    """Upsamples a pooled branch back to ``size``, as the release does.

    Nearest when the full size is an integer multiple of the pooled size (the replication
    is then exact), otherwise bilinear with ``align_corners=False`` (what the release's
    deprecated ``F.upsample(mode='bilinear')`` meant). Example: 14x14 pooled by 4 is 3x3,
    so bilinear.
    """
    h, w = int(size[0]), int(size[1])
    if replicates([x.shape[-2], x.shape[-1]], [h, w]):
        return F.interpolate(x, size=(h, w), mode="nearest")
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)


def replicates(small: List[int], size: List[int]) -> bool:
    """Whether upsampling ``small`` to ``size`` is an exact replication (integer factors): then
    :func:`upsample_to` is nearest, and BN and ReLU may run before it."""
    return size[0] % small[0] == 0 and size[1] % small[1] == 0


def branch_input(x: torch.Tensor, pooled: Dict[int, torch.Tensor], scale: int) -> Tuple[torch.Tensor, Upsampling]:
    """The input of one branch, ``x`` max-pooled by ``scale`` (kernel = stride), with how the
    branch's output returns to ``x``'s size: :data:`FULL` (scale 1, no upsampling),
    :data:`NEAREST` (an exact replication, so per-pixel work may run before it) or
    :data:`BILINEAR`.

    The one branch step of every SA forward (training, eval and fused): call it for each
    branch in order with the same ``pooled`` dict (factor -> map, starting as ``{1: x}``). A
    pooled map is built from the coarsest map already pooled whose factor divides its own:
    pooling by ``a*b`` equals pooling by ``a`` then ``b``, as the floors and windows nest
    (proved in tests/test_fast_path.py). So the x4 branch pools the x2 branch's map.

    Where ``scale`` exceeds the map's side (small inputs), the branch pools the whole map along
    that axis (a global max) and its output is spread back over it: the factor is clamped to
    the side, per axis. Such a map is not reused, since clamped windows no longer nest.
    """
    if scale == 1:
        return x, Upsampling.FULL
    h, w = x.shape[-2], x.shape[-1]
    if scale <= h and scale <= w:
        source = 1
        for factor in pooled.keys():
            if scale % factor == 0 and factor > source:
                source = factor
        step = scale // source
        p = F.max_pool2d(pooled[source], step, step)
        pooled[scale] = p
    else:
        kernel = [min(scale, h), min(scale, w)]
        p = F.max_pool2d(x, kernel, kernel)
    return p, Upsampling.NEAREST if replicates([p.shape[-2], p.shape[-1]], [h, w]) else Upsampling.BILINEAR


@register_notrace_module  # torch.fx: the branches' pooling and upsampling depend on the input's size
class SABottleneck(nn.Module):
    """ResNet bottleneck with a scale aggregation (SA) block in place of the 3x3 conv.

    Paper Fig. 3: 1x1 conv -> BN -> ReLU -> SA block -> ReLU -> 1x1 conv -> BN, plus shortcut.
    The SA block has one branch per scale ``s`` with ``C_s > 0`` channels:
    max-pool by ``s`` -> conv -> upsample to the pre-pool size -> BN (its own BN, after
    the upsampling). The branches are concatenated in scale order. Stride-2 blocks
    max-pool their input 2x2 first, and both paths start from the pooled input.

    The forward computes exactly that with less full-resolution work; each rewrite is proved
    in tests/test_fast_path.py, and the whole block against an independent functional
    forward (tests/reference.py). Where a branch's upsampling is an exact nearest
    replication, its BN and ReLU run before it: BN's batch statistics are those of the
    replicated map, and only the running variance's n/(n-1) differs, which
    :func:`replicated_bn` corrects. In eval mode BN, a per-channel affine map, also runs
    before bilinear upsampling.
    """

    expansion = 4

    def __init__(self, spec: BlockSpec, scales: Sequence[int], device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        planes, out_channels = spec.planes, spec.out_channels
        self.scales = tuple(scales)
        #: the pooling factor of each existing branch, in order
        self.branch_scales: List[int] = [s for s, c in zip(scales, spec.channels) if c > 0]
        self.pool = nn.MaxPool2d(2, 2) if spec.stride == 2 else None
        self.conv1 = nn.Conv2d(spec.in_channels, planes, 1, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(planes, **dd)
        self.act1 = nn.ReLU(inplace=True)
        # Keyed by branch position, so a zero-width branch leaves a gap ("0", "2", "3"), as in
        # the release's state_dicts, and has no conv and no BN.
        self.conv2 = nn.ModuleDict()
        self.bn2 = nn.ModuleDict()
        for i, (c, k) in enumerate(zip(spec.channels, spec.kernel_sizes)):
            if c > 0:
                self.conv2[str(i)] = nn.Conv2d(planes, c, k, padding=k // 2, bias=False, **dd)
                self.bn2[str(i)] = nn.BatchNorm2d(c, **dd)
        self.conv3 = nn.Conv2d(spec.width, out_channels, 1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(out_channels, **dd)
        self.downsample = (
            nn.Sequential(nn.Conv2d(spec.in_channels, out_channels, 1, bias=False, **dd), nn.BatchNorm2d(out_channels, **dd))
            if spec.has_projection
            else None
        )
        self.act3 = nn.ReLU(inplace=True)

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """The SA block and the ReLU after it: ``relu(cat_s(bn_s(upsample(conv_s(pool_s(x))))))``."""
        if self.training and not torch.jit.is_scripting():
            return self._aggregate_train(x)
        # eval (or frozen BN): BN is a per-channel affine map, which commutes with both upsamplings;
        # ReLU commutes with nearest replication only
        h, w = x.shape[-2], x.shape[-1]
        pooled: Dict[int, torch.Tensor] = {1: x}
        branches: List[torch.Tensor] = []
        for i, (conv, bn) in enumerate(zip(self.conv2.values(), self.bn2.values())):
            p, mode = branch_input(x, pooled, self.branch_scales[i])
            y = bn(conv(p))
            if mode == Upsampling.BILINEAR:
                branches.append(F.relu(upsample_to(y, [h, w])))
            elif mode == Upsampling.NEAREST:
                branches.append(F.interpolate(F.relu(y), size=(h, w), mode="nearest"))
            else:
                branches.append(F.relu(y))
        return torch.cat(branches, dim=1) if len(branches) > 1 else branches[0]

    @torch.jit.unused
    def _aggregate_train(self, x: torch.Tensor) -> torch.Tensor:
        """Training mode: BN's batch statistics must be those of the upsampled map; where the
        upsampling replicates exactly, :func:`replicated_bn` gets them from the pooled map."""
        h, w = x.shape[-2], x.shape[-1]
        pooled: Dict[int, torch.Tensor] = {1: x}
        branches: List[torch.Tensor] = []
        for scale, conv, bn in zip(self.branch_scales, self.conv2.values(), self.bn2.values()):
            p, mode = branch_input(x, pooled, scale)
            y = conv(p)
            if mode == Upsampling.BILINEAR:
                if isinstance(bn, nn.BatchNorm2d) and bn.training:  # batch statistics of the upsampled map
                    branches.append(F.relu(bn(upsample_to(y, [h, w]))))
                else:  # frozen: an affine map, which commutes with the upsampling
                    branches.append(F.relu(upsample_to(bn(y), [h, w])))
                continue
            y = F.relu(replicated_bn(bn, y, (h // y.shape[-2]) * (w // y.shape[-1])))
            branches.append(y if mode == Upsampling.FULL else F.interpolate(y, size=(h, w), mode="nearest"))
        return torch.cat(branches, dim=1) if len(branches) > 1 else branches[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool is not None:
            x = self.pool(x)
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.aggregate(out)
        out = self.bn3(self.conv3(out))
        out += shortcut  # in place, as torchvision's ResNet: a fresh full-size tensor per block costs page faults
        return self.act3(out)


def replicated_bn(bn: nn.Module, y: torch.Tensor, replicas: int) -> torch.Tensor:
    """``bn`` applied to ``y`` as if to ``y`` with each pixel replicated ``replicas`` times (an
    exact nearest upsampling), without building that map.

    The normalisation uses the biased batch variance, which replication leaves unchanged. The
    running variance, though, is updated with the unbiased one, ``n / (n - 1)`` times it, and
    ``n`` is the replicated map's pixel count: that update is done here, not by ``F.batch_norm``.
    """
    if not isinstance(bn, nn.BatchNorm2d) or not bn.training or replicas == 1:
        return bn(y)  # eval, frozen (FrozenBatchNorm2d), or nothing replicated
    if y.numel() == y.shape[1]:
        # one value per channel: F.batch_norm refuses it, the replicated map has `replicas` equal
        # values (variance 0), so the normalised map is 0 and the output is the bias
        out = (y - y.mean(dim=(0, 2, 3), keepdim=True)) * (1.0 / math.sqrt(bn.eps))
        if bn.affine:
            out = out * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    else:
        out = F.batch_norm(y, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    if not bn.track_running_stats:
        return out
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        var, mean = torch.var_mean(y.to(torch.promote_types(y.dtype, torch.float32)), dim=(0, 2, 3), correction=0)
        n = y.numel() // y.shape[1] * replicas
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_((var * (n / (n - 1))).to(bn.running_var.dtype), alpha=momentum)
    return out


#: Stages a ScaleNet may have: forward_features names them one by one (TorchScript cannot
#: look up a submodule by a computed name).
MAX_STAGES = 6


class ScaleNet(nn.Module):
    """A ScaleNet built from a :class:`~scalenet.structure.Structure`.

    The ``imagenet`` stem is the ResNet one (7x7 stride-2 conv, BN, ReLU, 3x3 stride-2
    max-pool); the ``small`` stem, for images of 64 px or less, is a 3x3 stride-1 conv with
    no max-pool. Every stage after the first halves the resolution in its first block. Any
    input of at least 32 px runs (the published models were trained at 224); at the
    structure's own size the outputs are the release's.
    """

    def __init__(
        self,
        structure: Structure,
        num_classes: int = 1000,
        in_chans: int = 3,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if len(structure.layers) > MAX_STAGES:
            raise ValueError(f"{structure.name or 'structure'} has {len(structure.layers)} stages; a ScaleNet has at most {MAX_STAGES}")
        check_memory(structure, num_classes, in_chans, device, dtype)
        dd = dict(device=device, dtype=dtype)
        self.structure = structure
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        self.frozen_stages = 0
        width, stem = structure.width, STEMS[structure.stem]
        self.conv1 = nn.Conv2d(in_chans, width, stem.kernel, stride=stem.stride, padding=stem.kernel // 2, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(width, **dd)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if stem.pool else nn.Identity()

        reduction = stem.stride
        self.feature_info = [dict(num_chs=width, reduction=reduction, module="act1")]
        if stem.pool:
            reduction *= 2
        stages: list[list[SABottleneck]] = [[] for _ in structure.layers]
        for spec in structure.blocks():
            stages[spec.stage].append(SABottleneck(spec, structure.scales, **dd))
        for i, blocks in enumerate(stages):
            if i > 0:
                reduction *= 2
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=blocks[-1].bn3.num_features, reduction=reduction, module=name))
        self.stage_names = [f"layer{i + 1}" for i in range(len(stages))]

        self.num_features = self.head_hidden_size = structure.num_features
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        """The release's init: conv ~ N(0, sqrt(2 / (k*k*out))), BN weight 1 and bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ timm surface
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        return dict(stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for ``num_classes`` (0: none), on the model's device and dtype;
        ``global_pool`` None keeps the current pooling ('' removes it)."""
        self.num_classes = num_classes
        pool = self.global_pool.pool_type if global_pool is None else global_pool
        ref = self.conv1.weight
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=pool,
                                                      device=ref.device, dtype=ref.dtype)
        self.global_pool.train(self.training)
        self.fc.train(self.training)

    @torch.jit.ignore
    def freeze_stages(self, n: int) -> None:
        """Fine-tuning: the stem and the first ``n`` stages get no gradients and keep their BN
        statistics (their BNs stay in eval mode while the model trains)."""
        if not 0 <= n <= len(self.stage_names):
            raise SettingError(f"{{freeze_stages}} must be between 0 and {len(self.stage_names)} (the stages), "
                               f"got {n}", "freeze_stages")
        self.frozen_stages = n
        for m in self._frozen_modules():
            m.requires_grad_(False)
        self.train(self.training)

    def _frozen_modules(self) -> list[nn.Module]:
        if not self.frozen_stages:
            return []
        return [self.conv1, self.bn1] + [getattr(self, name) for name in self.stage_names[: self.frozen_stages]]

    @torch.jit.ignore
    def train(self, mode: bool = True):
        super().train(mode)
        for m in self._frozen_modules():
            m.eval()
        return self

    def forward_stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.maxpool(self.act1(self.bn1(self.conv1(x))))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return self._checkpointed_stages(x)
        # one line per possible stage: hasattr is resolved when TorchScript compiles
        x = self.layer1(x)
        if hasattr(self, "layer2"):
            x = self.layer2(x)
        if hasattr(self, "layer3"):
            x = self.layer3(x)
        if hasattr(self, "layer4"):
            x = self.layer4(x)
        if hasattr(self, "layer5"):
            x = self.layer5(x)
        if hasattr(self, "layer6"):
            x = self.layer6(x)
        return x

    @torch.jit.unused
    def _checkpointed_stages(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.stage_names:
            x = checkpoint_seq(getattr(self, name), x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # ------------------------------------------------------------------ timm's feature API
    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, List[int]]] = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features at the stem (index 0, before its max-pool) and after each stage, as
        ``feature_info`` lists them. ``indices``: which (an int n: the last n); ``stop_early``:
        skip the stages after the last one taken."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r} is not supported; ScaleNet features are NCHW")
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        intermediates = []
        x = self.act1(self.bn1(self.conv1(x)))
        if 0 in take_indices:
            intermediates.append(x)
        x = self.maxpool(x)
        names = self.stage_names[:max_index] if stop_early else self.stage_names
        for i, name in enumerate(names, start=1):
            stage = getattr(self, name)
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drops the stages after the last index taken (and the stem's max-pool when only the
        stem is taken), and the head with ``prune_head``. Returns the indices to take."""
        take_indices, max_index = feature_take_indices(len(self.stage_names) + 1, indices)
        for name in self.stage_names[max_index:]:
            setattr(self, name, nn.Identity())
        if max_index == 0:
            self.maxpool = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module | None = None) -> dict[str, Any]:
    """Maps foreign checkpoints to our parameter names.

    The release's files already use our names. Training wrappers are undone: a nested
    ``state_dict``/``model`` entry is unwrapped and a ``module.`` (DataParallel/DDP) or
    ``_orig_mod.`` (torch.compile) prefix is removed.
    """
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state_dict.get(key), dict):
            state_dict = state_dict[key]
            break
    return clean_state_dict(state_dict)  # module. and _orig_mod., wrapped in either order


def pretrained_cfg_for(structure: Structure, in_chans: int = 3, **overrides: Any) -> dict[str, Any]:
    """timm pretrained_cfg for a structure: input size, normalisation, head names, figures."""
    n = structure.image_size
    final = structure.stage_sides(n)[-1]
    cfg: dict[str, Any] = dict(
        url="",
        num_classes=1000,
        input_size=(in_chans, n, n),
        pool_size=(final, final),
        crop_pct=0.875,
        interpolation="bilinear",
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        first_conv="conv1",
        classifier="fc",
        paper_name="Data-Driven Neuron Allocation for Scale Aggregation Networks",
        paper_ids="arXiv:1904.09460",
    )
    published = structure.meta.get("published")
    if published:
        cfg.update(
            origin_url="https://github.com/Eli-YiLi/ScaleNet",
            description=f"{structure.meta.get('title', structure.name)}, allocation as published (CVPR 2019).",
            notes=(
                f"published ImageNet top-1/top-5 error {published['top1_err']:.2f}/{published['top5_err']:.2f} "
                f"({published['recipe']}); figures of the original release, not measured by this library",
            ),
        )
    cfg.update(overrides)
    return cfg


def _create_scalenet(variant: str, pretrained: bool = False, structure: Structure | Mapping[str, Any] | None = None,
                     **kwargs: Any):
    if isinstance(structure, Mapping):  # timm's model_args (a Hub config.json): the structure as JSON
        structure = Structure.from_json(structure, source="model_args (structure)")
    if structure is None:  # a published name, or scalenet_structure built without arguments (as timm's tests do)
        structure = Structure.published(variant if variant in published_names() else DEFAULT_STRUCTURE)
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    if pretrained_cfg is None and variant not in published_names():
        pretrained_cfg = pretrained_cfg_for(structure, kwargs.get("in_chans", 3))
    return build_model_with_cfg(
        ScaleNet,
        variant,
        pretrained,
        pretrained_cfg=pretrained_cfg,
        structure=structure,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=tuple(range(len(structure.layers) + 1))),
        **kwargs,
    )


#: What ``scalenet_structure`` builds without ``structure=``: ScaleNet-50's allocation, so that every
#: registered name builds with no arguments, as timm's generic model tests and ``timm.list_models`` users expect.
DEFAULT_STRUCTURE = "scalenet50"

# default_cfgs must exist before the builders: register_model reads it when the decorator runs.
default_cfgs = generate_default_cfgs({
    **{f"{name}.in1k": pretrained_cfg_for(Structure.published(name)) for name in published_names()},
    # a learned structure: the cfg is made for the structure given (input size, pool size)
    "scalenet_structure": pretrained_cfg_for(dataclasses.replace(Structure.published(DEFAULT_STRUCTURE), meta={})) | dict(
        description="A ScaleNet of any structure (learned with scalenet allocate), given as structure= "
                    f"({DEFAULT_STRUCTURE}'s without one)"),
})


@register_model
def scalenet50_light(pretrained: bool = False, **kwargs: Any) -> ScaleNet:
    """ScaleNet-50-light: 2.86 GMACs, the ResNet-50 width in every block."""
    return _create_scalenet("scalenet50_light", pretrained, **kwargs)


@register_model
def scalenet50(pretrained: bool = False, **kwargs: Any) -> ScaleNet:
    """ScaleNet-50: 3.82 GMACs, about 1.36x the ResNet-50 width per block."""
    return _create_scalenet("scalenet50", pretrained, **kwargs)


@register_model
def scalenet101(pretrained: bool = False, **kwargs: Any) -> ScaleNet:
    """ScaleNet-101: 7.51 GMACs."""
    return _create_scalenet("scalenet101", pretrained, **kwargs)


@register_model
def scalenet152(pretrained: bool = False, **kwargs: Any) -> ScaleNet:
    """ScaleNet-152: 11.21 GMACs."""
    return _create_scalenet("scalenet152", pretrained, **kwargs)


@register_model
def scalenet_structure(pretrained: bool = False, structure: Structure | Mapping[str, Any] | None = None,
                       **kwargs: Any) -> ScaleNet:
    """A ScaleNet of any structure: ``structure`` is a :class:`Structure` or its JSON (the
    ``model_args`` of a Hub ``config.json``), so that timm's factory, ``pretrained_cfg_overlay``
    and ``features_only`` work on learned structures as on the published names. Without it,
    ScaleNet-50's structure (:data:`DEFAULT_STRUCTURE`)."""
    return _create_scalenet("scalenet_structure", pretrained, structure=structure, **kwargs)
