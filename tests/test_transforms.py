"""Image transforms of ``INPUT.TRANSFORMS`` / ``INPUT.TEST_RESIZE`` (DualCoOp's, SPEC 7)."""
import numpy as np
import pytest
import torch
from PIL import Image

from taidpt.config import get_cfg_default
from taidpt.engine.data import (TRAIN_TRANSFORMS, EitherOr, RandomColourCutout,
                                build_test_transform, build_train_transform)

DUALCOOP = ["random_crop_or_cutout", "imagenet_policy", "random_flip", "normalize"]
GREY = (128, 128, 128)


def _cfg(**opts):
    cfg = get_cfg_default()
    cfg.merge_from_list(["INPUT.SIZE", (64, 64), "INPUT.RRCROP_SCALE", (0.5, 1.0),
                         "INPUT.TRANSFORMS", DUALCOOP, *sum(opts.items(), ())])
    return cfg


def _image(width=80, height=60, seed=0):
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, 3)).astype(np.uint8)
    return Image.fromarray(pixels)


def _changed_box(before, after):
    """(rows, cols) spanned by the pixels that differ, and their count."""
    diff = np.any(np.asarray(before) != np.asarray(after), axis=-1)
    rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
    return rows, cols, int(diff.sum())


def test_train_shape_and_normalisation():
    out = build_train_transform(_cfg())(_image())
    assert out.shape == (3, 64, 64) and out.dtype == torch.float32
    plain = build_train_transform(_cfg(**{"INPUT.TRANSFORMS": ["normalize"]}))
    grey = plain(Image.new("RGB", (64, 64), GREY))
    mean, std = get_cfg_default().INPUT.PIXEL_MEAN, get_cfg_default().INPUT.PIXEL_STD
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(grey[:, 0, 0], expected, atol=1e-6)


def test_dualcoop_pipeline_order():
    steps = build_train_transform(_cfg(**{"INPUT.TRANSFORMS": DUALCOOP[::-1]})).transforms
    names = [type(step).__name__ for step in steps]
    assert names == ["EitherOr", "AutoAugment", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    crop, cutout = steps[0].first, steps[0].second
    assert type(crop).__name__ == "RandomResizedCrop" and crop.scale == (0.5, 1.0)
    assert crop.size == (64, 64) and crop.interpolation.value == "bicubic"
    resize, square = cutout.transforms
    assert resize.size == (64, 64) and resize.interpolation.value == "bilinear"
    assert isinstance(square, RandomColourCutout) and square.factor == 0.4
    assert steps[1].policy.name == "IMAGENET"


def test_both_branches_occur_about_half_the_time():
    either = EitherOr(lambda img: "first", lambda img: "second")
    torch.manual_seed(0)
    picks = [either(None) for _ in range(400)]
    assert 160 < picks.count("first") < 240 and picks.count("second") == 400 - picks.count("first")


def test_cutout_is_one_single_colour_square_of_0_4_of_the_side():
    cutout = RandomColourCutout(0.4)
    torch.manual_seed(0)
    image = Image.new("RGB", (50, 50), GREY)
    sides, areas = set(), []
    for _ in range(200):
        out = cutout(image)
        assert out.size == image.size and image.getpixel((0, 0)) == GREY  # input untouched
        rows, cols, count = _changed_box(image, out)
        assert count == len(rows) * len(cols)  # one filled rectangle
        assert len(rows) <= 20 and len(cols) <= 20  # 0.4 x 50, clipped at the borders
        colours = {out.getpixel((int(c), int(r))) for r in rows for c in cols}
        assert len(colours) == 1
        sides.add((len(rows), len(cols)))
        areas.append(count)
    assert (20, 20) in sides and min(areas) < 400  # whole squares and clipped ones
    assert np.mean(areas) > 0.6 * 400


def test_random_crop_or_cutout_gives_crops_and_cutouts():
    cfg = _cfg(**{"INPUT.TRANSFORMS": ["random_crop_or_cutout"]})
    either = build_train_transform(cfg).transforms[0]
    image = Image.new("RGB", (80, 60), GREY)
    torch.manual_seed(0)
    outs = [either(image) for _ in range(40)]
    cut = [o for o in outs if _changed_box(image.resize((64, 64)), o)[2] > 0]
    assert all(o.size == (64, 64) for o in outs)
    assert 8 < len(cut) < 32  # the other images are crops of a plain image: unchanged


def test_seeded_runs_are_deterministic():
    transform = build_train_transform(_cfg())
    image = _image()

    def draw(seed):
        torch.manual_seed(seed)
        return torch.stack([transform(image) for _ in range(8)])

    assert torch.equal(draw(3), draw(3))
    assert not torch.equal(draw(3), draw(4))


def test_unknown_name_and_two_geometric_steps_are_errors():
    with pytest.raises(ValueError, match="Unknown INPUT.TRANSFORMS.*'autoaugment'"):
        build_train_transform(_cfg(**{"INPUT.TRANSFORMS": ["random_flip", "autoaugment"]}))
    with pytest.raises(ValueError, match="only one of random_resized_crop, random_crop_or_cutout"):
        build_train_transform(_cfg(**{"INPUT.TRANSFORMS": ["random_resized_crop",
                                                           "random_crop_or_cutout"]}))
    with pytest.raises(ValueError, match="INPUT.CUTOUT_FACTOR"):
        build_train_transform(_cfg(**{"INPUT.CUTOUT_FACTOR": 1.5}))
    assert set(DUALCOOP) <= set(TRAIN_TRANSFORMS)


def test_test_resize_square_and_crop():
    image = Image.fromarray(np.tile(np.arange(80, dtype=np.uint8)[None, :, None], (40, 1, 3)))
    square = build_test_transform(_cfg(**{"INPUT.TEST_RESIZE": "square"}))
    crop = build_test_transform(_cfg())
    assert [type(t).__name__ for t in square.transforms] == ["Resize", "ToTensor", "Normalize"]
    resize = square.transforms[0]
    assert resize.size == (64, 64) and resize.interpolation.value == "bicubic"
    a, b = square(image), crop(image)
    assert a.shape == b.shape == (3, 64, 64)
    assert a[0, 0, 0] < b[0, 0, 0]  # square keeps the left edge that the center crop drops
    with pytest.raises(ValueError, match="INPUT.TEST_RESIZE"):
        build_test_transform(_cfg(**{"INPUT.TEST_RESIZE": "pad"}))
