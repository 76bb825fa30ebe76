"""Logits of the four published models at 224 px, eval and train mode, float32, on weights and
an input that are the same on every CPU (tests/portable.py).

Generated with the code of commit 80cc9ce (before inputs of any size were supported):
    git worktree add /tmp/old80 80cc9ce
    PYTHONPATH=/tmp/old80/src python tests/data/make_published_logits.py tests/data/published_logits_224.npz

A batch of 4: with a batch of 2, train mode normalises the 1x1 maps of stage 4 (the x4 and x7
branches) over two values per channel, and a pair that is nearly equal turns float32 rounding
into a different output (float32 against float64: 6% of the largest logit). At 4 that error is
below 1e-3 of it, so a comparison across machines can be tight (see tests/test_models.py).
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from portable import portable_init, portable_input  # noqa: E402

import scalenet  # noqa: E402

BATCH = 4

out = {}
for name in ("scalenet50_light", "scalenet50", "scalenet101", "scalenet152"):
    model = portable_init(scalenet.create_model(name), seed=0)
    x = portable_input((BATCH, 3, 224, 224), seed=1)
    with torch.no_grad():
        out[f"{name}.eval"] = model.eval()(x).clone()
        out[f"{name}.train"] = model.train()(x).clone()
np.savez_compressed(sys.argv[1], **{k: v.numpy() for k, v in out.items()})
