"""An independent, functional ScaleNet forward written from the paper and the release's
weight layout. It reads a state_dict by the release's key names only, so a model that
matches it on the same weights interprets the release's files the same way."""

import torch
import torch.nn.functional as F

#: deliberately wrong variants of the forward (see :func:`reference_forward`)
MUTATIONS = (None, "bilinear", "pool+1", "bn_after_relu")


def _bn(sd, prefix, x, training):
    return F.batch_norm(
        x, sd[prefix + ".running_mean"], sd[prefix + ".running_var"], sd[prefix + ".weight"], sd[prefix + ".bias"],
        training=training, momentum=0.1, eps=1e-5,
    )


def reference_forward(sd, rows, layers, x, scales=(1, 2, 4, 7), stem="imagenet", training=False, mutation=None):
    """``sd`` is modified in place in training mode (running statistics), like a real BN.

    ``mutation`` computes a deliberately wrong forward, to show that a comparison catches such
    a bug: ``"bilinear"`` (every branch upsampled bilinearly, nearest never used), ``"pool+1"``
    (each branch's pooling window one pixel wider than its stride), ``"bn_after_relu"`` (the
    branch BNs moved after the ReLU that follows the concatenation)."""
    assert mutation in MUTATIONS, mutation
    if stem == "imagenet":
        x = F.conv2d(x, sd["conv1.weight"], stride=2, padding=3)
        x = F.relu(_bn(sd, "bn1", x, training))
        x = F.max_pool2d(x, 3, 2, 1)
    else:
        x = F.relu(_bn(sd, "bn1", F.conv2d(x, sd["conv1.weight"], padding=1), training))
    k = 0
    for stage, depth in enumerate(layers):
        for b in range(depth):
            p = f"layer{stage + 1}.{b}"
            row = rows[k]
            if stage > 0 and b == 0:
                x = F.max_pool2d(x, 2, 2)
            if b == 0:
                shortcut = _bn(sd, p + ".downsample.1", F.conv2d(x, sd[p + ".downsample.0.weight"]), training)
            else:
                shortcut = x
            out = F.relu(_bn(sd, p + ".bn1", F.conv2d(x, sd[p + ".conv1.weight"]), training))
            h, w = out.shape[-2:]
            branches = []
            for i, s in enumerate(scales):
                key = f"{p}.conv2.{i}.weight"
                assert (key in sd) == (row[i] > 0), key
                if row[i] == 0:
                    continue
                weight = sd[key]
                ksize = 3 if row[-1] / 2**i > 1 else 1
                assert weight.shape == (row[i], weight.shape[1], ksize, ksize), key
                # a factor beyond the map's side pools the whole axis (inputs smaller than the structure's own)
                kernel = (min(s, h), min(s, w))
                window = (min(kernel[0] + 1, h), min(kernel[1] + 1, w)) if mutation == "pool+1" else kernel
                y = out if s == 1 else F.max_pool2d(out, kernel_size=window, stride=kernel)
                y = F.conv2d(y, weight, padding=ksize // 2)
                if s > 1:
                    ph, pw = y.shape[-2:]
                    if h % ph == 0 and w % pw == 0 and mutation != "bilinear":
                        y = F.interpolate(y, size=(h, w), mode="nearest")
                    else:
                        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
                branches.append(y if mutation == "bn_after_relu" else _bn(sd, f"{p}.bn2.{i}", y, training))
            out = F.relu(torch.cat(branches, 1))
            if mutation == "bn_after_relu":
                widths = [c for c in row[:-1] if c]
                parts = torch.split(out, widths, dim=1)
                keys = [i for i, c in enumerate(row[:-1]) if c]
                out = torch.cat([_bn(sd, f"{p}.bn2.{i}", y, training) for i, y in zip(keys, parts)], 1)
            out = _bn(sd, p + ".bn3", F.conv2d(out, sd[p + ".conv3.weight"]), training)
            x = F.relu(out + shortcut)
            k += 1
    x = x.mean((2, 3))
    return F.linear(x, sd["fc.weight"], sd["fc.bias"])


def reference_train_step(model, structure, x):
    """One training forward and backward (loss: mean square of the logits) of ``model`` and of
    :func:`reference_forward` on a copy of its state_dict. Returns the two outputs, a
    ``{name: (model grad, reference grad)}`` dict and a ``{name: (model buffer, reference
    buffer)}`` dict for the BN running statistics."""
    params = dict(model.named_parameters())
    sd = {k: v.detach().clone().requires_grad_(k in params) for k, v in model.state_dict().items()}
    out = model.train()(x)
    ref = reference_forward(sd, structure.rows, structure.layers, x, scales=structure.scales, stem=structure.stem,
                            training=True)
    out.square().mean().backward()
    ref.square().mean().backward()
    grads = {k: (p.grad, sd[k].grad) for k, p in params.items()}
    stats = {k: (b, sd[k]) for k, b in model.named_buffers() if k.endswith(("running_mean", "running_var"))}
    return out, ref, grads, stats
