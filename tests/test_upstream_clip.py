"""taidpt.clip on the three CLIP structures users have: the ``openai-clip`` wheel, CoOp's bundled
``clip/`` (from the pristine CoOp archive, imported from inside the CoOp checkout where it
shadows the wheel) and the TaI-DPT reference's bundled copy. The reference's copy is not among
the archives; :class:`ReferenceModifiedResNet` below is a stand-in reproducing what differs for
us: one shared ``relu`` in the stem instead of ``relu1``..``relu3``, a class of its own (not the
imported ``ModifiedResNet``), the input cast to the weights' dtype, fp16 weights."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from fake_data import child_env
from taidpt.clip import (dense_image_features, encode_image, encode_text, image_feature_map,
                         is_resnet, load_clip, random_clip, to_fp16, tokenize)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["a cat on a sofa", "a dog " * 40, ""]

FEATURES = textwrap.dedent("""
    import sys, torch, clip
    from taidpt.clip import (dense_image_features, encode_image, encode_text, image_feature_map,
                             is_resnet, load_clip, tokenize)
    model = load_clip(sys.argv[1])
    images = torch.load(sys.argv[2])
    texts = ["a cat on a sofa", "a dog " * 40, ""]
    with torch.no_grad():
        out = {"clip_file": clip.__file__, "has_relu1": hasattr(model.visual, "relu1"),
               "is_resnet": is_resnet(model), "map": image_feature_map(model, images),
               "dense": dense_image_features(model, images), "image": encode_image(model, images),
               "stock_image": model.encode_image(images), "tokens": tokenize(texts, 32),
               "text": encode_text(model, tokenize(texts, 32))}
    torch.save(out, sys.argv[3])
""")


def _features(model, images):
    with torch.no_grad():
        return {"map": image_feature_map(model, images), "dense": dense_image_features(model, images),
                "image": encode_image(model, images), "tokens": tokenize(TEXTS, 32),
                "text": encode_text(model, tokenize(TEXTS, 32))}


def test_coop_copy_inside_a_coop_checkout_gives_the_wheels_features(upstream, tiny_clip_file, tmp_path):
    images = torch.randn(2, 3, 64, 64)
    torch.save(images, tmp_path / "images.pt")
    run = subprocess.run(
        [sys.executable, "-c", FEATURES, tiny_clip_file, str(tmp_path / "images.pt"),
         str(tmp_path / "out.pt")], cwd=upstream["coop"], capture_output=True, text=True,
        env=child_env(), timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    coop = torch.load(tmp_path / "out.pt")
    assert coop["clip_file"] == os.path.join(upstream["coop"], "clip", "__init__.py")
    assert not coop["has_relu1"] and coop["is_resnet"]  # CoOp's stem has one shared relu
    wheel = _features(load_clip(tiny_clip_file), images)
    assert torch.equal(coop["map"], wheel["map"]) and torch.equal(coop["image"], wheel["image"])
    assert all(torch.equal(a, b) for a, b in zip(coop["dense"], wheel["dense"]))
    assert torch.equal(coop["tokens"], wheel["tokens"]) and torch.equal(coop["text"], wheel["text"])
    assert torch.allclose(coop["stock_image"], coop["image"], atol=1e-6)  # = CoOp's own encode_image


class ReferenceModifiedResNet(nn.Module):
    """Stand-in for the reference copy's image tower, holding the modules of a wheel
    ``ModifiedResNet``: one ``relu`` for the stem, input cast to the weights' dtype."""

    def __init__(self, wheel_visual: nn.Module) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "avgpool",
                     "layer1", "layer2", "layer3", "layer4", "attnpool"):
            setattr(self, name, getattr(wheel_visual, name))
        self.relu = nn.ReLU(inplace=True)
        self.input_resolution = wheel_visual.input_resolution

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.type(self.conv1.weight.dtype)
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2), (self.conv3, self.bn3)):
            x = self.relu(bn(conv(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.avgpool(x)))))
        return self.attnpool(x)


@pytest.mark.parametrize("fp16", [False, True])
def test_reference_structure_gives_the_wheels_features(fp16):
    wheel, reference = random_clip("tiny", seed=3), random_clip("tiny", seed=3)
    reference.visual = ReferenceModifiedResNet(reference.visual)
    if fp16:
        wheel, reference = to_fp16(wheel), to_fp16(reference)
    assert is_resnet(reference) and not hasattr(reference.visual, "relu1")
    images = torch.randn(2, 3, 64, 64)
    ours, theirs = _features(wheel, images), _features(reference, images)
    assert ours["map"].dtype == (torch.float16 if fp16 else torch.float32)
    for key in ("map", "image", "text"):
        assert torch.equal(ours[key], theirs[key]), key
    assert all(torch.equal(a, b) for a, b in zip(ours["dense"], theirs["dense"]))
    with torch.no_grad():  # and the copy's own forward is CLIP's stock image feature
        assert torch.allclose(reference.encode_image(images).float(), theirs["image"].float(), atol=1e-3)


def test_model_names_do_not_depend_on_the_clip_copy():
    from taidpt.clip import CLIP_MODEL_URLS

    assert {"RN50x64", "ViT-L/14", "ViT-L/14@336px"} <= set(CLIP_MODEL_URLS)  # CoOp's copy lacks these
