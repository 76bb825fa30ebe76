"""The ScaleNet network as Keras 3 layers, channels-last, built for one input size.

Each layer is named after the PyTorch module it mirrors (``layer1.0.conv2.1`` becomes
``layer1_0_conv2_1``), so that weights are copied by name. The conventions that make the port
exact (keras-hub's ResNet port uses the same ones):

- a padded or strided conv is ``ZeroPadding2D`` then ``Conv2D(padding="valid")``: TensorFlow's
  "same" pads (0, 1) at stride 2 on even sizes where PyTorch pads (1, 1);
- ``MaxPooling2D`` with kernel = stride and "valid" padding floors like ``F.max_pool2d``; the
  stem's padded max-pool follows a ReLU, so zero padding equals PyTorch's -inf padding;
- ``BatchNormalization(epsilon=1e-5, momentum=0.9)``, PyTorch's eps and momentum 0.1;
- nearest upsampling by an integer factor is a repetition (``UpSampling2D``), exact; other
  factors are bilinear with half-pixel centres (:class:`BilinearResize`), PyTorch's
  ``align_corners=False``.

Kernels start at zero: every model is built to receive a PyTorch model's weights (random
initialisers would cost a JAX compilation per shape, a minute for ScaleNet-50).

Shapes are static: a branch's pooling window and its way back (nearest or bilinear, the global
max where the factor exceeds the map) are decided here, from the input size the model is built
for, exactly as :func:`scalenet.models.scalenet.branch_input` decides them at run time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras
from keras import layers

from ..structure import STEMS, BlockSpec, Structure

__all__ = ["Built", "build", "BilinearResize", "MUTATIONS"]

#: Deliberate bugs the parity tests build to show that their tolerance catches real changes.
MUTATIONS = (None, "bilinear-everywhere", "bn-after-relu")


@dataclass
class Built:
    """A built Keras model and its layers by PyTorch module name (``conv1``, ``layer1.0.bn2.3``)."""

    model: keras.Model
    layers: dict[str, layers.Layer] = field(default_factory=dict)


@keras.saving.register_keras_serializable(package="scalenet")
class BilinearResize(layers.Layer):
    """Bilinear resizing to a fixed ``size`` with half-pixel centres and no antialiasing, which is
    PyTorch's ``F.interpolate(mode="bilinear", align_corners=False)``. (Keras's ``Resizing``
    layer computes the same eagerly, but its TensorFlow SavedModel export gave other values.)"""

    def __init__(self, size: tuple[int, int], **kwargs: Any):
        super().__init__(**kwargs)
        self.size = tuple(int(s) for s in size)

    def call(self, x):
        return keras.ops.image.resize(x, self.size, interpolation="bilinear", antialias=False)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], *self.size, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "size": self.size}


class _Builder:
    def __init__(self, mutation: str | None):
        if mutation not in MUTATIONS:
            raise ValueError(f"unknown mutation {mutation!r}")
        self.mutation = mutation
        self.layers: dict[str, layers.Layer] = {}

    def _keep(self, torch_name: str, layer: layers.Layer) -> layers.Layer:
        self.layers[torch_name] = layer
        return layer

    def conv(self, x, torch_name: str, filters: int, kernel: int, stride: int = 1, bias: bool = False):
        pad = kernel // 2
        if pad:
            x = layers.ZeroPadding2D(pad, name=_name(torch_name) + "_pad")(x)
        conv = layers.Conv2D(filters, kernel, strides=stride, padding="valid", use_bias=bias, name=_name(torch_name),
                             kernel_initializer="zeros")  # the weights come from PyTorch (see copy_weights)
        return self._keep(torch_name, conv)(x)

    def bn(self, x, torch_name: str):
        bn = layers.BatchNormalization(axis=-1, momentum=0.9, epsilon=1e-5, name=_name(torch_name))
        return self._keep(torch_name, bn)(x)

    # ------------------------------------------------------------------ the network
    def stem(self, x, structure: Structure, in_chans: int):
        stem = STEMS[structure.stem]
        x = self.conv(x, "conv1", structure.width, stem.kernel, stem.stride)
        x = layers.ReLU(name="act1")(self.bn(x, "bn1"))
        return x

    def block(self, x, spec: BlockSpec, scales: tuple[int, ...], prefix: str):
        if spec.stride == 2:
            x = layers.MaxPooling2D(2, 2, padding="valid", name=_name(prefix) + "_pool")(x)
        shortcut = x
        if spec.has_projection:
            shortcut = self.conv(x, f"{prefix}.downsample.0", spec.out_channels, 1)
            shortcut = self.bn(shortcut, f"{prefix}.downsample.1")
        out = layers.ReLU(name=_name(prefix) + "_act1")(self.bn(self.conv(x, f"{prefix}.conv1", spec.planes, 1),
                                                                 f"{prefix}.bn1"))
        branches = [self.branch(out, f"{prefix}", i, scale, c, k)
                    for i, (scale, c, k) in enumerate(zip(scales, spec.channels, spec.kernel_sizes)) if c > 0]
        out = layers.Concatenate(axis=-1, name=_name(prefix) + "_cat")(branches) if len(branches) > 1 else branches[0]
        out = self.bn(self.conv(out, f"{prefix}.conv3", spec.out_channels, 1), f"{prefix}.bn3")
        out = layers.Add(name=_name(prefix) + "_add")([out, shortcut])
        return layers.ReLU(name=_name(prefix) + "_act3")(out)

    def branch(self, x, prefix: str, i: int, scale: int, channels: int, kernel: int):
        """Paper Fig. 3: max-pool by ``scale``, conv, upsample to the block's size, BN, then the
        ReLU after the concatenation (per branch here: ReLU is per element)."""
        h, w = int(x.shape[1]), int(x.shape[2])
        tag = f"{_name(prefix)}_branch{i}"
        p = x
        if scale > 1:
            window = (min(scale, h), min(scale, w))  # a factor beyond the map's side pools the whole axis
            p = layers.MaxPooling2D(window, window, padding="valid", name=f"{tag}_pool")(x)
        y = self.conv(p, f"{prefix}.conv2.{i}", channels, kernel)
        ph, pw = int(y.shape[1]), int(y.shape[2])
        if (ph, pw) != (h, w):
            if h % ph == 0 and w % pw == 0 and self.mutation != "bilinear-everywhere":  # an exact replication
                y = layers.UpSampling2D((h // ph, w // pw), interpolation="nearest", name=f"{tag}_up")(y)
            else:
                y = BilinearResize((h, w), name=f"{tag}_up")(y)
        if self.mutation == "bn-after-relu":
            return self.bn(layers.ReLU(name=f"{tag}_act")(y), f"{prefix}.bn2.{i}")
        return layers.ReLU(name=f"{tag}_act")(self.bn(y, f"{prefix}.bn2.{i}"))


def build(structure: Structure, *, num_classes: int = 1000, in_chans: int = 3, image_size: tuple[int, int],
          features: bool = False, name: str | None = None, mutation: str | None = None) -> Built:
    """The Keras model of ``structure`` for NHWC inputs of ``image_size`` (height, width): the
    logits (``num_classes`` 0: the pooled features), or with ``features`` the five maps that
    PyTorch's ``features_only`` gives (the stem before its max-pool and each stage)."""
    b = _Builder(mutation)
    inputs = keras.Input((*image_size, in_chans), name="input")
    x = b.stem(inputs, structure, in_chans)
    levels = [x]
    if STEMS[structure.stem].pool:
        x = layers.ZeroPadding2D(1, name="maxpool_pad")(x)  # after a ReLU: zeros pad like -inf
        x = layers.MaxPooling2D(3, 2, padding="valid", name="maxpool")(x)
    for spec in structure.blocks():
        x = b.block(x, spec, structure.scales, f"layer{spec.stage + 1}.{spec.block}")
        if spec.block == structure.layers[spec.stage] - 1:
            levels.append(x)
    if features:
        outputs: Any = levels
    else:
        outputs = layers.GlobalAveragePooling2D(name="global_pool")(x)
        if num_classes:
            outputs = b._keep("fc", layers.Dense(num_classes, name="fc", kernel_initializer="zeros"))(outputs)
    model = keras.Model(inputs, outputs, name=name or (structure.name or "scalenet").replace("-", "_"))
    return Built(model, b.layers)


def _name(torch_name: str) -> str:
    return torch_name.replace(".", "_")
