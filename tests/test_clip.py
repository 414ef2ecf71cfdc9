"""CLIP loading, random geometries and dense / sequence features against slow re-computations."""
import os

import pytest
import torch
import torch.nn.functional as F

from taidpt.clip import (CLIP_MODEL_URLS, GEOMETRIES, context_length_of, dense_image_features, encode_image,
                         encode_prompt_embeddings, encode_text, geometry_from_state_dict,
                         load_clip, random_clip, save_clip, text_sequence_features, tokenize)


@pytest.mark.parametrize("geometry", ["tiny", "tiny-vit"])
def test_random_clip_roundtrips_bit_exactly_through_a_file(tmp_path, geometry):
    model = random_clip(geometry, seed=3)
    path = save_clip(model, str(tmp_path / "m.pt"))
    loaded = load_clip(path)
    assert geometry_from_state_dict(loaded.state_dict()) == GEOMETRIES[geometry]
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert a.dtype == b.dtype and torch.equal(a, b), k
    assert os.listdir(tmp_path) == ["m.pt"]  # no temp file (.m.pt.<uuid>.tmp) left behind


def test_random_clip_is_seeded():
    a, b, c = random_clip("tiny", 1), random_clip("tiny", 1), random_clip("tiny", 2)
    assert torch.equal(a.token_embedding.weight, b.token_embedding.weight)
    assert not torch.equal(a.token_embedding.weight, c.token_embedding.weight)


def test_named_geometries_follow_openai_head_rules():
    for name in CLIP_MODEL_URLS:
        g = GEOMETRIES[name]
        assert g.transformer_heads * 64 == g.transformer_width


def test_missing_weights_offline_names_path_url_and_checksum(tmp_path, monkeypatch):
    monkeypatch.setenv("TAIDPT_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as err:
        load_clip("RN50", download_root=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path / "RN50.pt") in msg
    assert CLIP_MODEL_URLS["RN50"] in msg
    assert CLIP_MODEL_URLS["RN50"].split("/")[-2] in msg
    assert "MODEL.BACKBONE.PATH" in msg


def test_unknown_name_or_missing_file_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing file nor a model name"):
        load_clip(str(tmp_path / "nope.pt"))


def test_corrupt_weights_file_is_explained(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeError, match=str(bad)):
        load_clip(str(bad))


@pytest.fixture(scope="module")
def rn():
    return random_clip("tiny", seed=0)


def _feature_map(model, images):
    v = model.visual
    x = v.relu1(v.bn1(v.conv1(images)))
    x = v.avgpool(v.relu3(v.bn3(v.conv3(v.relu2(v.bn2(v.conv2(x)))))))
    return v.layer4(v.layer3(v.layer2(v.layer1(x))))


def _slow_dense(model, images):
    """Per position: value projection then output projection of the attention pool."""
    v = model.visual
    fmap = _feature_map(model, images)
    b, c, h, w = fmap.shape
    out = torch.empty(h * w, b, model.text_projection.shape[1])
    for i in range(h):
        for j in range(w):
            for n in range(b):
                feat = fmap[n, :, i, j]
                out[i * w + j, n] = v.attnpool.c_proj(v.attnpool.v_proj(feat))
    return out


@torch.no_grad()
@pytest.mark.parametrize("size", [64, 96])
def test_dense_features_shapes_and_slow_match(rn, size):
    images = torch.randn(2, 3, size, size)
    glob, dense = dense_image_features(rn, images)
    hw = (size // 32) ** 2
    assert glob.shape == (2, 128) and dense.shape == (hw, 2, 128)
    assert torch.allclose(dense, _slow_dense(rn, images), atol=1e-5)


@torch.no_grad()
def test_global_without_positional_differs_and_stock_path_matches_openai(rn):
    images = torch.randn(3, 3, 64, 64)
    glob_nopos, _ = dense_image_features(rn, images)
    glob_pos, _ = dense_image_features(rn, images, global_positional=True)
    assert torch.allclose(glob_pos, rn.encode_image(images), atol=1e-5)
    assert torch.allclose(encode_image(rn, images), rn.encode_image(images), atol=1e-5)
    assert not torch.allclose(glob_nopos, glob_pos, atol=1e-3)


@torch.no_grad()
def test_global_without_positional_is_attention_over_mean_query(rn):
    images = torch.randn(1, 3, 64, 64)
    glob, _ = dense_image_features(rn, images)
    pool = rn.visual.attnpool
    saved = pool.positional_embedding.data.clone()
    pool.positional_embedding.data.zero_()
    try:
        expected = pool(_feature_map(rn, images))
    finally:
        pool.positional_embedding.data.copy_(saved)
    assert torch.allclose(glob, expected, atol=1e-5)


@torch.no_grad()
def test_vit_features_shapes():
    vit = random_clip("tiny-vit", seed=0)
    images = torch.randn(2, 3, 32, 32)
    glob, dense = dense_image_features(vit, images)
    assert glob.shape == (2, 64) and dense.shape == (16, 2, 64)
    assert torch.allclose(glob, vit.encode_image(images), atol=1e-5)
    assert encode_image(vit, torch.randn(2, 3, 48, 48)).shape == (2, 64)


@torch.no_grad()
def test_text_sequence_features_match_openai_at_eos_and_cut_is_exact(rn):
    tokens = tokenize(["a photo of a dog.", "two red cars on a long road near a house"], rn.context_length)
    seq = text_sequence_features(rn, tokens)
    assert seq.shape == (2, rn.context_length, 128)
    eos = tokens.argmax(-1)
    assert torch.allclose(seq[torch.arange(2), eos], rn.encode_text(tokens), atol=1e-5)
    assert torch.allclose(encode_text(rn, tokens), rn.encode_text(tokens), atol=1e-5)
    cut = int(eos.max()) + 1
    assert torch.allclose(text_sequence_features(rn, tokens[:, :cut]), seq[:, :cut], atol=1e-5)


@torch.no_grad()
def test_encode_prompt_embeddings_equals_encode_text_for_token_embeddings(rn):
    tokens = tokenize(["a photo of a cat.", "x"], rn.context_length)
    emb = rn.token_embedding(tokens)
    assert torch.allclose(encode_prompt_embeddings(rn, emb, tokens), rn.encode_text(tokens), atol=1e-5)


def test_tokenize_truncates_and_keeps_eos():
    tokens = tokenize(["word " * 100], context_length=32)
    assert tokens.shape == (1, 32) and tokens[0, -1].item() == 49407 and tokens[0, 0].item() == 49406


def test_context_length_of_file_name_and_default(tiny_clip_file):
    assert context_length_of(tiny_clip_file) == 32
    assert context_length_of("tiny-vit") == 32
    assert context_length_of("RN50") == 77
