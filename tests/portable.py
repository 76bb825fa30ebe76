"""Weights and inputs that are bit-identical on every CPU, for comparisons with outputs recorded
on another machine (tests/data/).

torch's normal draws are not: ``torch.randn`` and the ``kaiming_normal_`` init take another
code path per CPU capability (AVX2, AVX-512, none), and under ``ATEN_CPU_CAPABILITY=default``
38% of a (4, 3, 224, 224) input differs from the AVX2 one in the last bits. numpy's PCG64
uniform doubles are integer arithmetic plus one exact scaling, and the affine maps and the
float32 rounding below are IEEE operations, so these values are the same everywhere.
"""

import math

import numpy as np
import torch

__all__ = ["portable_init", "portable_input"]


def _uniform(rng: np.random.Generator, shape, low: float, high: float) -> torch.Tensor:
    return torch.from_numpy(low + (high - low) * rng.random(tuple(shape))).float()


def portable_init(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Overwrites every float tensor of ``model``'s state_dict, by key in sorted order: convs
    and linears with the variance of a ReLU-preserving init (conv: 2 / fan-out, as the models'
    own init; linear: 1 / fan-in), BN affine parameters and running statistics away from the
    identity (so that a BN applied in the wrong place changes eval outputs too)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    with torch.no_grad():
        for name, t in sorted(model.state_dict().items()):
            if not t.is_floating_point():
                continue
            leaf = name.rsplit(".", 1)[-1]
            if t.dim() == 4:
                bound = math.sqrt(3.0 * 2.0 / (t.shape[0] * t.shape[2] * t.shape[3]))
                t.copy_(_uniform(rng, t.shape, -bound, bound))
            elif t.dim() == 2:
                bound = math.sqrt(3.0 / t.shape[1])
                t.copy_(_uniform(rng, t.shape, -bound, bound))
            elif leaf in ("weight", "running_var"):
                t.copy_(_uniform(rng, t.shape, 0.5, 1.5))
            else:  # BN and classifier biases, running means
                t.copy_(_uniform(rng, t.shape, -0.1, 0.1))
    return model


def portable_input(shape, seed: int = 1) -> torch.Tensor:
    """A float32 tensor uniform on [-sqrt(3), sqrt(3)] (unit variance)."""
    return _uniform(np.random.Generator(np.random.PCG64(seed)), shape, -math.sqrt(3.0), math.sqrt(3.0))
