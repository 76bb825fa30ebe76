"""Logits of the four published models at 224 px (fixed init and input), eval and train mode.

Generated with the code of commit 80cc9ce (before inputs of any size were supported):
    PYTHONPATH=<checkout of 80cc9ce>/src python tests/data/make_published_logits.py tests/data/published_logits_224.npz
"""
import sys

import numpy as np
import torch

import scalenet

out = {}
for name in ("scalenet50_light", "scalenet50", "scalenet101", "scalenet152"):
    torch.manual_seed(0)
    model = scalenet.create_model(name)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out[f"{name}.eval"] = model.eval()(x).clone()
        out[f"{name}.train"] = model.train()(x).clone()
np.savez_compressed(sys.argv[1], **{k: v.numpy() for k, v in out.items()})
