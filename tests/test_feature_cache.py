"""The caption feature cache (issue 13 item 1): what it stores, that training on it equals
training on the text encoder, and that a stale or torn cache is rebuilt, never used."""
import logging
import os

import numpy as np
import pytest
import torch

from taidpt.clip import random_clip, text_sequence_features, tokenize
from taidpt.models.feature_cache import (HEADER_BYTES, CaptionFeatureDataset,
                                         load_or_build_caption_features, real_lengths)
from taidpt.trainers.taidpt import cut_after_last_eos
from test_taidpt_model import _trainer_cfg

CAPTIONS = ["a cat sits next to a person !~", "two people eat a hot dog at the beach", "a cat",
            "a very long caption about a dog that runs along the beach with a red ball"]


@pytest.fixture(scope="module")
def clip_model():
    return random_clip("tiny", seed=0)


def _tokens(clip_model, texts=CAPTIONS):
    return tokenize(texts, clip_model.context_length)


def _build(clip_model, tokens, directory, dtype="fp32"):
    return load_or_build_caption_features(clip_model, tokens, str(directory), dtype, progress=False)


@pytest.mark.parametrize("dtype,tolerance,itemsize", [("fp32", 1e-5, 4), ("fp16", 2e-3, 2)])
def test_the_cache_holds_the_real_tokens_features(clip_model, tmp_path, dtype, tolerance, itemsize):
    tokens = _tokens(clip_model)
    cache = _build(clip_model, tokens, tmp_path, dtype)
    lengths = real_lengths(tokens)
    assert lengths.tolist() == [int(t.argmax()) + 1 for t in tokens]
    width = clip_model.text_projection.shape[1]
    # only real tokens, no padding: the data is (real tokens) x D x itemsize plus the offsets
    assert os.path.getsize(cache.path) == HEADER_BYTES + 8 * (len(tokens) + 1) + int(lengths.sum()) * width * itemsize
    index = torch.tensor([3, 0, 2])
    eos, sequence = cache.gather(index)
    cut = cut_after_last_eos(tokens[index])
    with torch.no_grad():
        expected = text_sequence_features(clip_model, cut)
    assert sequence.shape == expected.shape and eos.shape == (3, width)
    real = torch.arange(cut.shape[1])[None, :] < lengths[index, None]
    assert (sequence.float() - expected)[real].abs().max() <= tolerance * expected.abs().max()
    assert torch.all(sequence[~real] == 0)  # past each caption's EOS: zeros (masked in training)
    expected_eos = expected[torch.arange(3), cut.argmax(dim=-1)]
    assert (eos.float() - expected_eos).abs().max() <= tolerance * expected.abs().max()


def _three_steps(cfg):
    """Losses, batches' tokens and the two contexts after 3 SGD steps of the trainer."""
    from taidpt.engine import build_trainer

    torch.manual_seed(0)  # the same initial contexts
    trainer = build_trainer(cfg)
    loader = trainer.build_caption_loader()
    losses, batches = [], []
    for _, batch in zip(range(3), loader):
        batches.append(cut_after_last_eos(batch["tokens"]))
        losses.append(trainer.forward_backward(batch)["loss"])
    learner = trainer.model.prompt_learner
    return loader, losses, batches, (learner.ctx.detach().clone(), learner.ctx_double.detach().clone())


@pytest.mark.slow  # ~15 s idle: three trainers on the tiny CLIP
def test_cached_training_equals_the_text_encoder(tiny_clip_file, tmp_path):
    os.symlink(tiny_clip_file, tmp_path / "clip.pt")
    runs = {}
    for name, opts in (("uncached", ["DATASET.CAPTIONS.FEATURE_CACHE", False]),
                       ("fp32", ["DATASET.CAPTIONS.FEATURE_CACHE_DTYPE", "fp32"]),
                       ("fp16", [])):  # the defaults: cache on, fp16
        cfg = _trainer_cfg(tmp_path)
        cfg.merge_from_list(opts)
        runs[name] = _three_steps(cfg)
    assert not isinstance(runs["uncached"][0].dataset, CaptionFeatureDataset)
    assert isinstance(runs["fp16"][0].dataset, CaptionFeatureDataset)
    base_losses, base_batches, base_ctx = runs["uncached"][1:]
    assert len(set(base_losses)) == 3  # three different batches, contexts moving
    for name, tolerance in (("fp32", 1e-5), ("fp16", 1e-3)):
        _, losses, batches, ctx = runs[name]
        assert all(torch.equal(a, b) for a, b in zip(batches, base_batches))  # the same shuffle
        assert np.abs(np.subtract(losses, base_losses)).max() <= tolerance, name
        for ours, theirs in zip(ctx, base_ctx):
            assert (ours - theirs).abs().max() <= tolerance, name


def _rebuilt(caplog, clip_model, tokens, directory, dtype="fp32"):
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="taidpt.models.feature_cache"):
        cache = _build(clip_model, tokens, directory, dtype)
    return cache, "wrote" in caplog.text, caplog.text


def test_a_changed_clip_corpus_or_dtype_gets_its_own_cache(clip_model, tmp_path, caplog):
    tokens = _tokens(clip_model)
    first, built, _ = _rebuilt(caplog, clip_model, tokens, tmp_path)
    assert built
    again, built, text = _rebuilt(caplog, clip_model, tokens, tmp_path)
    assert not built and "reusing" in text and again.path == first.path
    other_clip = random_clip("tiny", seed=1)
    for model, toks, dtype in ((other_clip, tokens, "fp32"), (clip_model, tokens[:3], "fp32"),
                               (clip_model, tokens, "fp16")):
        cache, built, _ = _rebuilt(caplog, model, toks, tmp_path, dtype)
        assert built and cache.path != first.path
    eos, _ = _build(other_clip, tokens, tmp_path).gather(torch.arange(len(tokens)))
    with torch.no_grad():
        expected = text_sequence_features(other_clip, tokens)[torch.arange(len(tokens)), tokens.argmax(-1)]
    assert (eos - expected).abs().max() <= 1e-5


def _damage(path, how):
    if how == "truncated":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 10)
    elif how == "stale key":  # another CLIP's cache under this name
        with open(path, "r+b") as f:
            data = f.read(HEADER_BYTES)
            start = data.index(b'"key": "') + len(b'"key": "')
            f.seek(start)
            f.write(b"0" * 8)
    elif how == "offsets":
        with open(path, "r+b") as f:
            f.seek(HEADER_BYTES + 8)
            f.write(np.int64(1).tobytes())
    else:
        with open(path, "wb") as f:
            f.write(b"TAIDPT")


@pytest.mark.parametrize("how", ["truncated", "stale key", "offsets", "not a cache"])
def test_a_torn_or_stale_cache_is_detected_and_rebuilt(clip_model, tmp_path, caplog, how):
    tokens = _tokens(clip_model)
    cache = _build(clip_model, tokens, tmp_path)
    size, expected = os.path.getsize(cache.path), cache.gather(torch.arange(len(tokens)))
    _damage(cache.path, how)
    rebuilt, built, text = _rebuilt(caplog, clip_model, tokens, tmp_path)
    assert built and "unusable" in text and rebuilt.path == cache.path
    assert os.path.getsize(rebuilt.path) == size
    for ours, theirs in zip(rebuilt.gather(torch.arange(len(tokens))), expected):
        assert torch.equal(ours, theirs)
    assert os.listdir(tmp_path) == [os.path.basename(cache.path)]  # no temp file left behind


def test_prepare_builds_the_features_that_training_reuses(tiny_clip_file, tmp_path, capsys, caplog):
    from taidpt.cli.prepare import run
    from taidpt.engine import build_trainer
    from test_datasets import parse

    os.symlink(tiny_clip_file, tmp_path / "clip.pt")
    cfg = _trainer_cfg(tmp_path)
    config = tmp_path / "toy.yaml"
    config.write_text(cfg.dump())
    assert run(parse(["prepare", "--dataset-config-file", str(config), "--features"])) == 0
    out = capsys.readouterr().out
    path = out.split("Caption features (fp16, ")[1].split(": ")[1].strip()
    assert os.path.isfile(path)
    torch.manual_seed(0)
    trainer = build_trainer(cfg)
    with caplog.at_level(logging.INFO, logger="taidpt.models.feature_cache"):
        loader = trainer.build_caption_loader()
    assert f"Caption features: reusing {path}" in caplog.text
    assert loader.dataset.features.path == path
