"""Data sets and transforms: ImageFolder layouts, Fashion-MNIST, and the fast tensor path.

Two kinds of source:

- An ImageFolder directory, either ``train/`` and ``val/`` with class folders (the ImageNet
  layout) or flat class folders, which get a deterministic held-out split. Images go
  through torchvision transforms in DataLoader workers; unreadable images are skipped and
  counted.
- ``fashion-mnist``: the IDX files of the Debian package ``dataset-fashion-mnist`` (or a
  torchvision download where that is missing and the machine is online). Small in-memory
  data sets like this one stay uint8 tensors and are augmented on whole batches
  (:class:`TensorBatches`), which is several times faster than per-image PIL transforms on
  a CPU.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


from .compat import MissingExtra, installed_version, require
from .errors import SettingError
from .fileio import cache_root

__all__ = [
    "DataSpec",
    "TensorData",
    "TensorBatches",
    "ImageFiles",
    "ShardSampler",
    "DECODERS",
    "make_loader",
    "read_image",
    "sample_key",
    "sample_rng",
    "collate_skipping",
    "image_transforms",
    "build_data",
    "load_fashion_mnist",
    "BUILTIN",
    "SMALL_IMAGE",
    "class_mismatch",
    "first_difference",
    "format_names",
]

#: Images of at most this side use the small-input recipe (random crop with padding + flip).
SMALL_IMAGE = 64
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
BUILTIN = ("fashion-mnist",)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


# ---------------------------------------------------------------------------- tensors in memory
@dataclass
class TensorData:
    """A whole data set in memory: uint8 images (N, C, H, W) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None, seed: int = 0) -> "TensorData":
        """A class-balanced-by-chance random subset of ``n`` images (all when None)."""
        if n is None or n >= len(self):
            return self
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n]
        return TensorData(self.images[idx], self.labels[idx])


class TensorBatches:
    """Batches from a :class:`TensorData`, normalised and (for training) augmented on the batch.

    Augmentation is the small-image recipe: random crop with zero padding and horizontal flip,
    drawn per image from a generator seeded by ``seed`` and the epoch, so an epoch's batches
    are the same after a resume. The order comes from :attr:`sampler` (a :class:`ShardSampler`:
    seeded per epoch, one shard per rank), as for a DataLoader: ``loader.sampler.set_epoch(e)``.
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        augment: bool = True,
        padding: int = 2,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.data = data
        self.batch_size = batch_size
        self.train = train
        self.augment = augment
        self.padding = padding
        self.seed = seed
        self.sampler = ShardSampler(len(data), shuffle=train, seed=seed, rank=rank, world_size=world_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = torch.tensor(self.sampler.indices(), dtype=torch.long)
        stop = len(idx) - len(idx) % self.batch_size if self.train else len(idx)
        for start in range(self.sampler.start, stop, self.batch_size):
            b = idx[start : start + self.batch_size]
            x = self.data.images[b].float()
            if self.train and self.augment:
                x = self._augment(x, self._generator(start // self.batch_size))
            yield (x - self.mean) / self.std, self.data.labels[b]

    def _generator(self, batch: int) -> torch.Generator:
        """The augmentation draws of one batch: seeded by the run's seed, the epoch and the batch's
        place in it, so a run resumed inside an epoch draws what an uninterrupted one does."""
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + self.sampler.epoch) * 7919 + batch) % (2**63))

    def _augment(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.padding
        if p:
            padded = torch.nn.functional.pad(x, (p, p, p, p))
            ys = torch.randint(0, 2 * p + 1, (n, 1), generator=g) + torch.arange(h)
            xs = torch.randint(0, 2 * p + 1, (n, 1), generator=g) + torch.arange(w)
            x = padded[
                torch.arange(n).view(n, 1, 1, 1), torch.arange(c).view(1, c, 1, 1), ys.view(n, 1, h, 1), xs.view(n, 1, 1, w)
            ]
        flip = torch.rand(n, generator=g) < 0.5
        x[flip] = x[flip].flip(3)
        return x


# ---------------------------------------------------------------------------- Fashion-MNIST
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem, f"raw/{stem}.gz", f"raw/{stem}", f"FashionMNIST/raw/{stem}.gz", f"FashionMNIST/raw/{stem}"):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: str | os.PathLike | None = None) -> tuple[TensorData, TensorData]:
    """(train, test) as uint8 tensors, 60,000 and 10,000 images of 1x28x28.

    Looks in ``root``, ``$SCALENET_FASHION_MNIST`` and the Debian package's directory; if
    none has the files, tries torchvision's download into ``~/.cache/scalenet``.
    """
    candidates = [Path(root)] if root else []
    if os.environ.get("SCALENET_FASHION_MNIST"):
        candidates.append(Path(os.environ["SCALENET_FASHION_MNIST"]))
    candidates += [Path(d) for d in FASHION_MNIST_DIRS]
    cache = cache_root()
    candidates.append(cache)
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for c in candidates:
        files = [_find_idx(c, s) for s in stems]
        if all(files):
            break
    else:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(cache), train=True, download=True)
            FashionMNIST(str(cache), train=False, download=True)
            files = [_find_idx(cache, s) for s in stems]
        except Exception:  # offline, or the download failed
            files = []
        if not files or not all(files):
            raise FileNotFoundError(
                "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist and the download failed; "
                "install it with 'apt-get install dataset-fashion-mnist' or set SCALENET_FASHION_MNIST to a folder "
                "holding the four IDX files"
            )
    arrays = [_read_idx(f) for f in files]
    train = TensorData(torch.from_numpy(arrays[0].copy()).unsqueeze(1), torch.from_numpy(arrays[1].astype(np.int64)))
    test = TensorData(torch.from_numpy(arrays[2].copy()).unsqueeze(1), torch.from_numpy(arrays[3].astype(np.int64)))
    return train, test


# ---------------------------------------------------------------------------- image folders
#: How image files are decoded: ``pil`` (PIL, transforms on the PIL image), or into a uint8
#: tensor with the transforms on the tensor: ``torchcodec`` (TorchCodec's ``decode_image``, the
#: ``scalenet[torchcodec]`` extra) or ``torchvision`` (``torchvision.io.decode_image``, which
#: torchvision deprecates from 0.29 in favour of TorchCodec).
DECODERS = ("pil", "torchvision", "torchcodec")


def check_decoder(decode: str) -> None:
    """Refuses an unknown decoder, or TorchCodec where it is not installed, in one line."""
    if decode not in DECODERS:
        raise SettingError(f"{{decode}} {decode!r} is not one of {', '.join(DECODERS)}", "decode")
    if decode == "torchcodec":
        decoders = require("torchcodec.decoders", "--decode torchcodec")
        if not hasattr(decoders, "decode_image"):  # TorchCodec decodes images from 0.16
            raise MissingExtra(f"--decode torchcodec needs torchcodec>=0.16, which decodes images (found "
                               f"{installed_version('torchcodec')}, for torch {torch.__version__}); the releases "
                               "with image decoders pair with newer torch: use --decode pil here")


def _decode_to_tensor(path: str, decode: str, mode: str) -> torch.Tensor:
    if decode == "torchcodec":
        from torchcodec.decoders import ImageReadMode, decode_image
    else:
        from torchvision.io import ImageReadMode, decode_image
    image = decode_image(path, mode=ImageReadMode.RGB if mode == "RGB" else ImageReadMode.GRAY)
    if image.dtype == torch.uint16:  # 16-bit PNGs: 0..65535 to 0..255, rounded
        image = ((image.to(torch.int32) * 255 + 32767) // 65535).to(torch.uint8)
    return image


def read_image(path: str, decode: str = "pil", mode: str = "RGB"):
    """An image in ``mode`` (``RGB`` or ``L``): a PIL image, or a uint8 (C, H, W) tensor with
    ``decode="torchcodec"`` or ``"torchvision"``; None when the file is not a readable image.
    16-bit and float images are scaled to 8 bits (:func:`to_8bit`)."""
    try:
        if decode != "pil":
            return _decode_to_tensor(path, decode, mode)
        from PIL import Image

        with Image.open(path) as im:
            return to_8bit(im).convert(mode)
    except Exception:  # truncated, not an image, unreadable
        return None


def to_8bit(image):
    """A PIL image whose samples are 8-bit: 16-bit integer images (``I;16*``, and ``I`` with
    values up to 65535) are scaled by 255/65535, float images (``F``) by 255 from [0, 1]
    (clipped), other 32-bit integer images from their own range. ``convert("RGB")`` would clip
    them at 255 instead, turning most pixels of a 16-bit image white."""
    from PIL import Image

    if not (image.mode.startswith("I") or image.mode == "F"):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scaled = np.clip(values, 0.0, 1.0) * 255.0
    elif image.mode.startswith("I;16") or (values.size and values.min() >= 0 and values.max() <= 65535):
        scaled = values * (255.0 / 65535.0)
    else:  # signed or wider integers: their own range
        low, high = (values.min(), values.max()) if values.size else (0.0, 1.0)
        scaled = (values - low) * (255.0 / max(high - low, 1.0))
    return Image.fromarray(np.rint(scaled).astype(np.uint8))  # 2-D uint8: mode L


class ImageFiles(Dataset):
    """(path, label) samples, decoded by ``decode`` (see :data:`DECODERS`). An unreadable image
    yields ``None`` (skipped by :func:`collate_skipping`, which counts it) instead of stopping
    the run. A key ``(index, seed)`` (see :class:`ShardSampler`) seeds the random transforms."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Any, decode: str = "pil"):
        check_decoder(decode)
        self.samples = list(samples)
        self.transform = transform
        self.decode = decode

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]):
        i, seed = sample_key(key)
        path, label = self.samples[i]
        image = read_image(path, self.decode)
        if image is None:
            return None
        with sample_rng(seed):
            return self.transform(image), label


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stacks the readable samples; the third item counts the unreadable ones."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.long), skipped
    return torch.stack([g[0] for g in good]), torch.tensor([g[1] for g in good]), skipped


class ShardSampler(torch.utils.data.Sampler):
    """Seeded per-epoch shuffle (train) or plain order (eval), split across ranks.

    Training shards are cut to equal length so every rank runs the same number of steps;
    evaluation shards are disjoint and cover every sample exactly once. The epoch's order is
    drawn once, on first use after :meth:`set_epoch`.

    Resuming inside an epoch: ``set_epoch(epoch, start)`` skips the first ``start`` samples of
    this rank's shard (the steps already taken), so iteration and ``len`` cover the rest.
    With ``sample_seeds`` (training image folders) each item is ``(index, seed)``: the seed of
    that sample's random transforms, a function of the run's seed, the epoch and the index
    alone, so augmentation does not depend on loader workers or on where a run resumed.
    """

    def __init__(self, n: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1,
                 sample_seeds: bool = False):
        self.n, self.shuffle, self.seed, self.rank, self.world_size = n, shuffle, seed, rank, world_size
        self.sample_seeds = sample_seeds
        self.epoch = 0
        self.start = 0
        self._order: list[int] | None = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        if not 0 <= start <= self.shard_size:
            raise SettingError(f"cannot start epoch {epoch + 1} at sample {start}: this process's share of the "
                               "epoch has "
                             f"{self.shard_size} samples (was the run resumed with another {{batch_size}} or number of "
                             "processes?)", "batch_size")
        if epoch != self.epoch:
            self.epoch, self._order = epoch, None
        self.start = start

    def indices(self) -> list[int]:
        """This rank's sample indices for the current epoch, in order (from its beginning)."""
        if self._order is None:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                order = torch.randperm(self.n, generator=g).tolist()
                order = order[: self.n // self.world_size * self.world_size]
            else:
                order = list(range(self.n))
            self._order = order[self.rank :: self.world_size]
        return self._order

    def sample_seed(self, index: int) -> int:
        """The seed of sample ``index``'s random transforms in the current epoch."""
        return ((self.seed * 1_000_003 + self.epoch) * 2_654_435_761 + index) % (2**63)

    def __iter__(self):
        rest = self.indices()[self.start :]
        if self.sample_seeds:
            return iter([(i, self.sample_seed(i)) for i in rest])
        return iter(rest)

    @property
    def shard_size(self) -> int:
        if self.shuffle:
            return self.n // self.world_size
        return max(0, (self.n - self.rank + self.world_size - 1) // self.world_size)

    def __len__(self) -> int:
        return self.shard_size - self.start


def sample_key(key: int | tuple[int, int]) -> tuple[int, int | None]:
    """``(index, seed)`` from a sampler's item: an index, or an index with its transform seed."""
    return (key[0], key[1]) if isinstance(key, tuple) else (key, None)


@contextmanager
def sample_rng(seed: int | None):
    """Random transforms inside draw from a generator seeded with ``seed`` (torch's global one,
    which torchvision's transforms use), and the process's own state is restored after."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, collate_fn: Any, workers: int = 0, seed: int = 0,
                rank: int = 0, world_size: int = 1) -> torch.utils.data.DataLoader:
    """The DataLoader of every image-file data set: this rank's shard (a :class:`ShardSampler`,
    seeded transforms when training), persistent workers, pinned memory when a GPU is present,
    and worker seeds from a generator of its own, so the process's random state is untouched."""
    sampler = ShardSampler(len(dataset), shuffle=train, seed=seed, rank=rank, world_size=world_size, sample_seeds=train)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn, drop_last=train,
        persistent_workers=workers > 0, pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
    )


def _class_folders(root: Path) -> list[tuple[str, list[str]]]:
    """[(class name, sorted image paths)] for the class folders of ``root``, with clear errors."""
    if not root.is_dir():
        raise FileNotFoundError(f"data directory not found: {root}")
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(
            f"{root} has no class folders; expected {root}/<class>/<image> or {root}/train/<class>/<image> "
            f"and {root}/val/<class>/<image>"
        )
    out = []
    for d in classes:
        files = sorted(
            str(f) for f in d.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS
        )
        if not files:
            raise ValueError(f"class folder {d} has no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...); add images or remove it")
        if not any(read_image(f) is not None for f in files):  # stops at the first readable one
            raise ValueError(f"class folder {d} has {len(files)} image file(s) and none is readable; a model trained "
                             "there would never see the class (and its validation would not count it): fix the files "
                             "or remove the folder")
        out.append((d.name, files))
    if len(out) < 2:
        raise ValueError(f"{root} has a single class ({out[0][0]!r}); classification needs at least two class folders")
    return out


def _probe_image_size(path: str) -> int | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return max(im.size)
    except Exception:
        return None


def image_transforms(image_size: int, mean: Sequence[float], std: Sequence[float], decode: str = "pil") -> tuple[Any, Any]:
    """(train, eval) torchvision transforms: the ImageNet recipe, or the small-image one. They
    take PIL images, or uint8 tensors with the tensor decoders (the same operations,
    antialiased resizing, on the tensor)."""
    if decode != "pil":
        from torchvision.transforms import v2 as T

        norm = [T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    else:
        from torchvision import transforms as T

        norm = [T.ToTensor(), T.Normalize(mean, std)]
    if image_size <= SMALL_IMAGE:
        base = [T.Resize(image_size), T.CenterCrop(image_size)]
        train = T.Compose(base + [T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()] + norm)
        return train, T.Compose(base + norm)
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()] + norm)
    evaluation = T.Compose([T.Resize(round(image_size * 256 / 224)), T.CenterCrop(image_size)] + norm)
    return train, evaluation


# ---------------------------------------------------------------------------- one entry point
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


@dataclass
class DataSpec:
    """A resolved data source: what the model needs to know, and how to get batches."""

    name: str
    num_classes: int
    in_chans: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    train: Any  # TensorData or ImageFiles
    val: Any
    notes: list[str] = field(default_factory=list)
    eval_transform: Any = None

    @property
    def small(self) -> bool:
        return self.image_size <= SMALL_IMAGE

    def loader(self, split: str, batch_size: int, *, workers: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
               augment: bool = True):
        """An iterable of ``(images, labels)`` or ``(images, labels, skipped)`` batches whose
        ``sampler`` (a :class:`ShardSampler`) sets the epoch's order."""
        data = self.train if split == "train" else self.val
        train = split == "train"
        if isinstance(data, TensorData):
            return TensorBatches(data, batch_size, self.mean, self.std, train=train, augment=augment,
                                 padding=max(1, self.image_size // 8), seed=seed, rank=rank, world_size=world_size)
        if train and not augment:
            data = ImageFiles(data.samples, self.eval_transform, data.decode)
        return make_loader(data, batch_size, train=train, collate_fn=collate_skipping, workers=workers, seed=seed,
                           rank=rank, world_size=world_size)


def build_data(
    data: str | os.PathLike,
    image_size: int | None = None,
    *,
    train_subset: int | None = None,
    val_subset: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    decode: str = "pil",
) -> DataSpec:
    """Resolves ``data`` (a built-in name or an ImageFolder directory) into a :class:`DataSpec`.
    ``decode`` chooses how image files are decoded (:data:`DECODERS`)."""
    check_decoder(decode)
    if str(data) == "fashion-mnist":
        if decode != "pil":
            raise SettingError(f"{{decode}} {decode} applies to image folders; {data} is read from its IDX files, "
                             "not decoded: drop {decode}", "decode")
        return _fashion_mnist(image_size, train_subset, val_subset, seed)
    root = Path(data)
    if not root.exists():
        raise FileNotFoundError(
            f"data directory not found: {root} (give an ImageFolder directory or one of: {', '.join(BUILTIN)})"
        )
    names, train_samples, val_samples, notes = _folder_samples(root, val_fraction)
    rng = np.random.default_rng(seed)
    if train_subset and train_subset < len(train_samples):
        train_samples = [train_samples[i] for i in sorted(rng.choice(len(train_samples), train_subset, replace=False))]
    if val_subset and val_subset < len(val_samples):
        val_samples = [val_samples[i] for i in sorted(rng.choice(len(val_samples), val_subset, replace=False))]
    if image_size is None:
        probed = next((s for s in map(_probe_image_size, (f for f, _ in train_samples[:8])) if s), None)
        image_size = probed if probed is not None and probed <= SMALL_IMAGE else 224
    train_tf, eval_tf = image_transforms(image_size, IMAGENET_MEAN, IMAGENET_STD, decode)
    return DataSpec(
        str(root), len(names), 3, image_size, IMAGENET_MEAN, IMAGENET_STD, names,
        ImageFiles(train_samples, train_tf, decode), ImageFiles(val_samples, eval_tf, decode), notes, eval_tf,
    )


def _fashion_mnist(image_size: int | None, train_subset: int | None, val_subset: int | None, seed: int) -> DataSpec:
    train, test = load_fashion_mnist()
    if image_size not in (None, 28):
        raise SettingError(f"fashion-mnist images are 28x28; {{image_size}} {image_size} is not supported for it",
                           "image_size")
    notes = []
    if train_subset:
        notes.append(f"trained on a random subset of {min(train_subset, len(train))} of {len(train)} training images")
    if val_subset:
        notes.append(f"evaluated on a random subset of {min(val_subset, len(test))} of {len(test)} test images")
    return DataSpec(
        "fashion-mnist", 10, 1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, list(FASHION_MNIST_CLASSES),
        train.subset(train_subset, seed), test.subset(val_subset, seed + 1), notes,
    )


def format_names(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(str(n) for n in names[:most])
    return f"[{shown}{f', ... ({len(names)} in all)' if len(names) > most else ''}]"


def first_difference(recorded: Sequence[str], classes: Sequence[str]) -> str:
    """Where two class lists part: ``label 3 is 'cat' there and 'dog' here``."""
    recorded, classes = [str(c) for c in recorded], [str(c) for c in classes]
    n = min(len(recorded), len(classes))
    first = next((i for i in range(n) if recorded[i] != classes[i]), n)
    if first < n:
        return f"label {first} is {recorded[first]!r} there and {classes[first]!r} here"
    return f"{len(recorded)} classes there, {len(classes)} here"


def class_mismatch(recorded: Sequence[str] | None, classes: Sequence[str], recorded_by: str, data: str) -> str | None:
    """Why a model that learned the classes ``recorded`` (in this order: label i is
    ``recorded[i]``) does not fit data whose labels are ``classes``, naming both lists and the
    first label that differs; None when they agree or nothing was recorded (older checkpoints)."""
    if recorded is None or [str(c) for c in recorded] == [str(c) for c in classes]:
        return None
    return (f"{recorded_by} was trained on the classes {format_names(recorded)}, but {data} has {format_names(classes)} "
            f"({first_difference(recorded, classes)})")


def _folder_samples(root: Path, val_fraction: float) -> tuple[list[str], list, list, list[str]]:
    """Class names and (file, label) samples of an ImageFolder tree: ``train/`` and ``val/`` class
    folders, or flat class folders with a fixed ``val_fraction`` of each class held out."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        train_classes, val_classes = _class_folders(root / "train"), _class_folders(root / "val")
        names = [c for c, _ in train_classes]
        if names != [c for c, _ in val_classes]:
            raise ValueError(f"{root}/train and {root}/val have different class folders; they must match")
        train_samples = [(f, i) for i, (_, files) in enumerate(train_classes) for f in files]
        val_samples = [(f, i) for i, (_, files) in enumerate(val_classes) for f in files]
        return names, train_samples, val_samples, []
    classes = _class_folders(root)
    names = [c for c, _ in classes]
    g = np.random.default_rng(12345)  # a fixed split, independent of the training seed
    train_samples, val_samples = [], []
    for i, (_, files) in enumerate(classes):
        order = g.permutation(len(files))
        n_val = max(1, round(len(files) * val_fraction)) if len(files) > 1 else 0
        val_samples += [(files[j], i) for j in order[:n_val]]
        train_samples += [(files[j], i) for j in order[n_val:]]
    return names, train_samples, val_samples, [f"flat class folders: a fixed {val_fraction:.0%} of each class held out for validation"]
