"""Data pipelines that a run can resume inside an epoch: the same batches from any start, with
any number of loader workers, and every image decoder."""

import importlib.util
import sys

import pytest
import torch

from scalenet.data import DECODERS, TensorBatches, TensorData, build_data

from helpers import make_image_folder

# torchvision.io's decoders warn from torchvision 0.29 (deprecated for TorchCodec): the tests of
# that decoder exercise it on purpose, so its warning is expected there and nowhere else
TORCHVISION_DEPRECATION = "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning"
NO_TORCHCODEC = importlib.util.find_spec("torchcodec") is None


def _decoder(decode: str):
    marks = {"torchvision": [pytest.mark.filterwarnings(TORCHVISION_DEPRECATION)],
             "torchcodec": [pytest.mark.skipif(NO_TORCHCODEC, reason="TorchCodec not installed: scalenet[torchcodec]")]}
    return pytest.param(decode, marks=marks.get(decode, []), id=decode)


ALL_DECODERS = [_decoder(d) for d in DECODERS]
TENSOR_DECODERS = [_decoder(d) for d in DECODERS if d != "pil"]


def _batches(loader, epoch, start=0):
    loader.sampler.set_epoch(epoch, start)
    return [(b[0].clone(), b[1].clone()) for b in loader]


def test_tensor_batches_resumed_inside_an_epoch_are_the_tail_of_the_epoch():
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=g), torch.arange(40) % 3)
    loader = TensorBatches(data, batch_size=4, mean=[0.5], std=[0.25], train=True, augment=True, seed=2)
    full = _batches(loader, epoch=1)
    assert len(full) == 10
    tail = _batches(loader, epoch=1, start=3 * 4)
    assert len(tail) == len(loader) == 7
    for (x, y), (x2, y2) in zip(full[3:], tail):  # same samples, same crops and flips
        assert torch.equal(x, x2) and torch.equal(y, y2)
    other = _batches(loader, epoch=2)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, other))  # a new epoch draws anew


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("data") / "images", classes=2, per_class=10, size=72)


@pytest.mark.parametrize("decode", ALL_DECODERS)
def test_image_batches_do_not_depend_on_workers_or_the_resume_point(folder, decode):
    data = build_data(folder, image_size=64, decode=decode)  # above 64 px: RandomResizedCrop + flip
    state = torch.get_rng_state()
    full = _batches(data.loader("train", 3, workers=0, seed=1), epoch=1)
    assert torch.equal(torch.get_rng_state(), state)  # the process's random state is untouched
    two_workers = _batches(data.loader("train", 3, workers=2, seed=1), epoch=1, start=2 * 3)
    assert len(full) == 6 and len(two_workers) == 4
    for (x, y, *_), (x2, y2, *_) in zip(full[2:], two_workers):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert full[0][0].shape == (3, 3, 64, 64) and full[0][0].dtype == torch.float32
    again = _batches(data.loader("train", 3, workers=0, seed=1), epoch=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(full, again))
    reseeded = _batches(data.loader("train", 3, workers=0, seed=2), epoch=1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(full, reseeded))


@pytest.mark.parametrize("decode", TENSOR_DECODERS)
def test_tensor_decoders_give_the_evaluation_images_of_pil(folder, decode):
    pil, tv = (build_data(folder, image_size=64, decode=d) for d in ("pil", decode))
    (xp, yp, _), (xt, yt, _) = next(iter(pil.loader("val", 2))), next(iter(tv.loader("val", 2)))
    assert torch.equal(yp, yt)
    assert (xp - xt).abs().mean() < 0.02  # the same resize and crop; resampling differs by rounding only


def test_unknown_decoder_is_a_clear_error(folder):
    with pytest.raises(ValueError, match="decode 'cv2' is not one of pil, torchvision, torchcodec"):
        build_data(folder, decode="cv2")


def test_a_decoder_for_a_data_set_that_is_not_decoded_is_refused():
    with pytest.raises(ValueError, match="^decode torchvision applies to image folders; fashion-mnist is read from its "
                                         "IDX files, not decoded: drop decode$"):
        build_data("fashion-mnist", decode="torchvision")


def test_torchcodec_missing_names_its_extra(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if not installed: import fails
    with pytest.raises(ImportError, match=r"^--decode torchcodec needs torchcodec, which is not installed; "
                                          r"install it with: pip install 'scalenet\[torchcodec\]'$"):
        build_data(folder, decode="torchcodec")
