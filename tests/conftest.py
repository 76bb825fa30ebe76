import pytest
import torch

from scalenet import Structure

# Reference figures at 224x224 and 1000 classes, from the issue (the release's numbers).
PUBLISHED = {
    "scalenet50_light": (2_861_475_840, 23_631_912),
    "scalenet50": (3_818_372_352, 31_483_618),
    "scalenet101": (7_511_097_600, 54_792_390),
    "scalenet152": (11_211_951_616, 77_220_070),
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def tiny() -> Structure:
    """A small-stem structure at 14 px (sides 14 and 7) with zero-width branches, bilinear
    upsampling (14 by 4 -> 3, 7 by 2 -> 3), nearest upsampling (14 by 2, 7 by 7) and 1x1
    kernels (the x7 branch at side 7)."""
    return Structure.from_channels(
        [[4, 2, 0, 2], [3, 3, 1, 1], [5, 0, 3, 0], [2, 2, 2, 0]],
        layers=(2, 2),
        stem="small",
        width=4,
        image_size=14,
        name="tiny",
    )
