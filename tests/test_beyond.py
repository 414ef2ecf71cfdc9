"""Issue 15: caption prototypes, modality-gap bridging and score debiasing (units, trainers, table)."""
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from taidpt.clip import encode_text, random_clip, tokenize
from taidpt.config import ConfigValueError, check_values, get_cfg_default
from taidpt.datasets.base import DATASET_REGISTRY, DatasetBase, ImageItem
from taidpt.engine.debias import class_statistics, debias
from taidpt.metrics import average_precision_per_class, mean_average_precision
from taidpt.models.modality_gap import ModalityGap, caption_means, normalised_mean
from taidpt.models.prototypes import CaptionPrototypes, caption_eos_features, caption_prototypes
from taidpt.models.spatial import spatial_pool


@pytest.fixture(scope="module")
def clip_model():
    return random_clip("tiny", seed=0)


# --- prototypes ----------------------------------------------------------------------------
def test_prototypes_equal_a_direct_mean_over_the_labelled_caption_features():
    gen = torch.Generator().manual_seed(0)
    eos = torch.randn(40, 8, generator=gen) * torch.rand(40, 1, generator=gen) * 5
    labels = (torch.rand(40, 5, generator=gen) < 0.3).float()
    labels[:, 4] = 0  # a class no caption mentions
    prototypes = caption_prototypes(eos, labels)
    for c in range(4):
        members = [eos[i] / eos[i].norm() for i in range(40) if labels[i, c] == 1]
        mean = sum(members) / len(members)
        assert torch.allclose(prototypes[c], mean / mean.norm(), atol=1e-6)
    assert torch.equal(prototypes[4], torch.zeros(8))


def test_caption_eos_features_are_clips_text_features(clip_model):
    tokens = tokenize(["a red ball", "two green trees next to a very long blue car", "sky"],
                      clip_model.context_length)
    with torch.no_grad():
        expected = encode_text(clip_model, tokens)
    assert torch.allclose(caption_eos_features(clip_model, tokens, batch_size=2), expected, atol=1e-5)


def test_prototype_heads_merge_as_documented():
    gen = torch.Generator().manual_seed(1)
    prototypes = F.normalize(torch.randn(3, 8, generator=gen), dim=-1)
    global_feat, dense = torch.randn(4, 8, generator=gen), torch.randn(5, 4, 8, generator=gen)
    pair = (torch.randn(4, 3, generator=gen), torch.randn(4, 3, generator=gen))
    heads = CaptionPrototypes(prototypes, 0.3, dense=False).infer(pair, global_feat, dense, 4.0, 40.0, 0.6)
    expected = 4.0 * F.normalize(global_feat, dim=-1) @ prototypes.t()
    merged = 0.6 * pair[0] + 0.4 * pair[1]
    assert list(heads) == ["global", "local", "merged", "prototype", "merged_prototype"]
    assert torch.allclose(heads["prototype"], expected) and torch.equal(heads["merged"], merged)
    assert torch.allclose(heads["merged_prototype"], 0.7 * merged + 0.3 * expected)
    dense_heads = CaptionPrototypes(prototypes, 0.3, dense=True).infer(pair, global_feat, dense, 4.0,
                                                                      40.0, 0.6)
    local = spatial_pool(F.normalize(dense, dim=-1) @ prototypes.t(), 40.0, 4.0)[0]
    assert torch.allclose(dense_heads["prototype"], 0.6 * expected + 0.4 * local)


# --- modality gap --------------------------------------------------------------------------
def test_modality_gap_off_returns_the_features_untouched():
    eos, tokens = torch.randn(2, 8), torch.randn(2, 5, 8)
    out = ModalityGap(0.0, None)(eos, tokens)
    assert out[0] is eos and out[1] is tokens


def test_modality_gap_shifts_then_adds_seeded_noise():
    eos, tokens = torch.randn(3, 8), torch.randn(3, 5, 8)
    shift = (torch.randn(8), torch.randn(8))
    shifted = ModalityGap(0.0, shift)(eos, tokens)
    assert torch.allclose(shifted[0], F.normalize(F.normalize(eos, dim=-1) + shift[0], dim=-1))
    assert torch.allclose(shifted[1], F.normalize(F.normalize(tokens, dim=-1) + shift[1], dim=-1))
    torch.manual_seed(5)
    noisy = ModalityGap(0.1, shift)(eos, tokens)
    torch.manual_seed(5)
    again = ModalityGap(0.1, shift)(eos, tokens)
    torch.manual_seed(5)
    n_eos, n_tokens = torch.randn(3, 8), torch.randn(3, 5, 8)
    assert torch.equal(noisy[0], again[0]) and torch.equal(noisy[1], again[1])
    assert torch.allclose(noisy[0], F.normalize(shifted[0] + 0.1 * n_eos, dim=-1), atol=1e-6)
    assert torch.allclose(noisy[1], F.normalize(shifted[1] + 0.1 * n_tokens, dim=-1), atol=1e-6)


def test_caption_means_count_only_non_padding_tokens(clip_model):
    from taidpt.trainers.taidpt import TaIDPTModel

    model = TaIDPTModel(clip_model, ["red", "blue"], n_ctx=2)
    tokens = tokenize(["a red ball", "the blue sky over a long road"], clip_model.context_length)
    eos_mean, token_mean = caption_means(model, tokens, torch.device("cpu"), batch_size=1)
    eos, sequence = model.caption_features(tokens)
    rows = [sequence[i, j] for i in range(2) for j in range(sequence.shape[1]) if tokens[i, j] != 0]
    assert torch.allclose(eos_mean, normalised_mean([eos]), atol=1e-6)
    assert torch.allclose(token_mean, normalised_mean([torch.stack(rows)]), atol=1e-6)
    assert len(rows) == int((tokens != 0).sum())


# --- debiasing -----------------------------------------------------------------------------
def _scores_and_targets(seed=0, n=60, c=5):
    rng = np.random.default_rng(seed)
    targets = np.where(rng.random((n, c)) < 0.3, 1.0, -1.0)
    return rng.normal(size=(n, c)) + targets, targets


def test_debiasing_is_invariant_to_a_per_class_affine_change():
    scores, targets = _scores_and_targets()
    val, _ = _scores_and_targets(seed=1)
    a, b = np.array([0.5, 3.0, 10.0, 1.0, 0.01]), np.array([-4.0, 2.0, 0.0, 100.0, 7.0])
    assert np.allclose(debias(a * scores + b, "transductive"), debias(scores, "transductive"))
    assert np.allclose(debias(a * scores + b, "val", a * val + b), debias(scores, "val", val))
    standard = debias(scores, "transductive")
    mean, std = class_statistics(standard)
    assert np.allclose(mean, 0) and np.allclose(std, 1)
    # per class increasing: every class's AP (so a lone head's mAP) is unchanged
    assert np.allclose(average_precision_per_class(debias(scores, "val", val), targets),
                       average_precision_per_class(scores, targets))


def test_debiasing_changes_merged_heads_and_rejects_bad_modes():
    scores, targets = _scores_and_targets()
    other = scores * np.array([10.0, 1.0, 0.1, 1.0, 5.0]) + np.array([5.0, 0.0, -3.0, 1.0, 0.0])
    raw = mean_average_precision(0.5 * scores + 0.5 * other[::-1], targets)
    fixed = mean_average_precision(0.5 * debias(scores, "transductive")
                                   + 0.5 * debias(other[::-1], "transductive"), targets)
    assert raw != pytest.approx(fixed)
    with pytest.raises(ValueError, match="val_scores"):
        debias(scores, "val")
    with pytest.raises(ValueError, match="transductive"):
        debias(scores, "test")


# --- config --------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value", [("TRAINER.TAIDPT.NOISE_STD", -0.1),
                                        ("TRAINER.TAIDPT.PROTOTYPES.WEIGHT", 1.5),
                                        ("TRAINER.ZEROSHOTCLIP.PROTOTYPES.WEIGHT", -0.5)])
def test_ranges_are_checked(key, value):
    cfg = get_cfg_default()
    cfg.merge_from_list([key, value])
    with pytest.raises(ConfigValueError, match=key.replace(".", r"\.")):
        check_values(cfg)


# --- trainers on a toy world ---------------------------------------------------------------
if "ToyBeyondWorld" not in DATASET_REGISTRY:
    @DATASET_REGISTRY.register()
    class ToyBeyondWorld(DatasetBase):
        """Three colour classes: 6 test, 3 val and 4 (unlabelled-use) training images."""

        def __init__(self, cfg):
            rng = np.random.default_rng(0)

            def images(prefix, n):
                items = []
                for i in range(n):
                    pixels = rng.integers(0, 60, (32, 32, 3)).astype(np.uint8)
                    pixels[..., i % 3] = 220
                    path = os.path.join(cfg.DATASET.ROOT, f"{prefix}{i}.png")
                    Image.fromarray(pixels).save(path)
                    label = -np.ones(3, dtype=np.float32)
                    label[i % 3] = 1
                    items.append(ImageItem(path, label))
                return items
            super().__init__(["red", "green", "blue"], test=images("test", 6), val=images("val", 3),
                             train_x=images("train", 4),
                             synonyms=[["red", "crimson"], ["green"], ["blue", "navy"]])


def _cfg(tmp_path, tiny_clip_file, trainer="TaIDPT", *opts):
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    captions = ["a red ball", "a crimson car and a green tree", "the blue sky", "navy and red",
                "green grass", "a blue and green flag", "red apples", "a navy coat"] * 4
    (data / "captions.txt").write_text("\n".join(captions) + "\n")
    cfg = get_cfg_default()
    cfg.merge_from_list([
        "DATASET.NAME", "ToyBeyondWorld", "DATASET.ROOT", str(data), "DATASET.CAPTIONS.SOURCE",
        "text", "DATASET.CAPTIONS.PATH", "captions.txt", "DATASET.CAPTIONS.TEMPLATES", False,
        "TRAINER.NAME", trainer,
        "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.BACKBONE.PATH", tiny_clip_file,
        "INPUT.SIZE", (64, 64), "DATALOADER.NUM_WORKERS", 0, "DATALOADER.TRAIN_X.BATCH_SIZE", 16,
        "USE_CUDA", False, "OPTIM.LR", 0.01, "OPTIM.MAX_EPOCH", 2, "SEED", 1,
        "TRAINER.TAIDPT.N_CTX", 4, "TRAIN.PRINT_FREQ", 100, *opts])
    return cfg


def _train(cfg):
    from taidpt.engine import build_trainer
    from taidpt.engine.utils import set_random_seed

    set_random_seed(cfg.SEED)
    trainer = build_trainer(cfg)
    trainer.train()
    return trainer, {k: v.clone() for k, v in trainer.model.prompt_learner.state_dict().items()}


@pytest.mark.slow  # four short trainings and a resume on the toy world
def test_noise_zero_and_mean_shift_off_reproduce_taidpt_bit_for_bit(tmp_path, tiny_clip_file,
                                                                    monkeypatch):
    import taidpt.trainers.taidpt as taidpt_trainer

    with monkeypatch.context() as patch:  # the reference: TaI-DPT with the bridge never installed
        patch.setattr(taidpt_trainer, "modality_gap_active", lambda node: False)
        _, plain = _train(_cfg(tmp_path / "a", tiny_clip_file))
    zero, explicit = _train(_cfg(tmp_path / "b", tiny_clip_file, "TaIDPT",
                                 "TRAINER.TAIDPT.NOISE_STD", 0.0, "TRAINER.TAIDPT.MEAN_SHIFT", False))
    assert zero.model.modality_gap is None
    assert all(torch.equal(plain[k], explicit[k]) for k in plain)
    _, noisy = _train(_cfg(tmp_path / "c", tiny_clip_file, "TaIDPT", "TRAINER.TAIDPT.NOISE_STD", 0.05))
    assert not torch.equal(plain["ctx"], noisy["ctx"])
    shifted_trainer, shifted = _train(_cfg(tmp_path / "d", tiny_clip_file, "TaIDPT",
                                           "TRAINER.TAIDPT.MEAN_SHIFT", True))
    assert shifted_trainer.model.modality_gap.shift is not None
    assert not torch.equal(plain["ctx"], shifted["ctx"])

    # exact resume with noise: epoch 1's checkpoint (and RNG state) resumed gives epoch 2's weights
    out = tmp_path / "c" / "out"
    resumed_dir = tmp_path / "resumed"
    shutil.copytree(out, resumed_dir)
    pointer = resumed_dir / "prompt_learner" / "checkpoint"
    pointer.write_text(pointer.read_text().replace("model.pth.tar-2", "model.pth.tar-1"))
    os.remove(resumed_dir / "prompt_learner" / "model.pth.tar-2")
    cfg = _cfg(tmp_path / "c", tiny_clip_file, "TaIDPT", "TRAINER.TAIDPT.NOISE_STD", 0.05,
               "OUTPUT_DIR", str(resumed_dir))
    trainer, resumed = _train(cfg)
    assert trainer.start_epoch == 1
    assert all(torch.equal(noisy[k], resumed[k]) for k in noisy)


@pytest.mark.slow  # builds two toy trainers and evaluates them
@pytest.mark.parametrize("trainer_name", ["TaIDPT", "ZeroshotCLIP"])
def test_prototype_heads_in_a_run_leave_the_other_heads_unchanged(tmp_path, tiny_clip_file,
                                                                   trainer_name):
    from taidpt.engine import build_trainer
    from taidpt.engine.utils import set_random_seed

    node = "TRAINER.TAIDPT" if trainer_name == "TaIDPT" else "TRAINER.ZEROSHOTCLIP"
    set_random_seed(1)  # the same initial contexts in both TaI-DPT trainers
    plain = build_trainer(_cfg(tmp_path / "a", tiny_clip_file, trainer_name)).test()
    set_random_seed(1)
    trainer = build_trainer(_cfg(tmp_path / "b", tiny_clip_file, trainer_name,
                                 f"{node}.PROTOTYPES.ENABLED", True,
                                 f"{node}.PROTOTYPES.WEIGHT", 0.25))
    results = trainer.test()
    assert {k: results[k] for k in ("mAP_global", "mAP_local", "mAP_merged")} == \
        {k: plain[k] for k in ("mAP_global", "mAP_local", "mAP_merged")}
    assert results["mAP"] == results["mAP_merged_prototype"]
    saved = np.load(tmp_path / "b" / "out" / "predictions_test.npz")
    assert np.allclose(saved["scores_merged_prototype"],
                       0.75 * saved["scores_merged"] + 0.25 * saved["scores_prototype"], atol=1e-5)
    assert str(saved["headline"]) == "merged_prototype"


# --- the table -----------------------------------------------------------------------------
def _write_predictions(folder, split, targets, **heads):
    os.makedirs(folder, exist_ok=True)
    n, c = targets.shape
    np.savez(os.path.join(folder, f"predictions_{split}.npz"),
             image_ids=np.array([f"{split}{i}.png" for i in range(n)]),
             classnames=np.array([f"c{j}" for j in range(c)]), targets=targets,
             headline=np.array("merged"), trainer=np.array("TaIDPT"), dataset=np.array("Synthetic"),
             split=np.array(split), epoch=np.array(1), **{f"scores_{k}": v for k, v in heads.items()})


def _fake_run(root, variant, seed, val_quality, test_quality, prototype=True):
    """A run whose merged head separates positives by ``*_quality`` on each split."""
    for split, quality, folder in (("val", val_quality, os.path.join(root, variant, f"seed{seed}", "val")),
                                   ("test", test_quality, os.path.join(root, variant, f"seed{seed}"))):
        targets = np.where(np.random.default_rng([seed, split == "val"]).random((80, 4)) < 0.4, 1.0, -1.0)
        rng = np.random.default_rng([seed, len(variant), split == "val"])
        heads = {"global": quality * targets + rng.normal(size=targets.shape),
                 "local": quality * targets + rng.normal(size=targets.shape)}
        if prototype:
            heads["prototype"] = targets + rng.normal(size=targets.shape)
        _write_predictions(folder, split, targets.astype(np.float32),
                           **{k: v.astype(np.float32) for k, v in heads.items()})


def test_beyond_table_chooses_on_val_and_reports_test(tmp_path):
    from taidpt.engine.beyond import build_table, combined, markdown
    from taidpt.engine.ensemble import load_predictions

    root = str(tmp_path / "synthetic")
    for seed in (1, 2):
        _fake_run(root, "plain", seed, 1.0, 1.0)
        _fake_run(root, "noise0.02", seed, 0.5, 3.0)  # best on test, worse on val
        _fake_run(root, "noise0.1", seed, 2.0, 0.2)  # best on val, worst on test
        _fake_run(root, "meanshift", seed, 1.0, 1.5, prototype=False)
    table = build_table(root, merge_rate=0.5, weights=(0.0, 0.5, 1.0))
    assert list(table.rows) == ["TaI-DPT", "+ prototypes", "+ noise", "+ mean shift",
                                "+ debiasing (val statistics)", "+ debiasing (transductive)",
                                "best combination"]
    for seed in (1, 2):
        noisy = load_predictions(os.path.join(root, "noise0.1", f"seed{seed}"), "test")
        expected = mean_average_precision(combined(noisy.scores, 0.5, 0.0), noisy.targets)
        assert table.rows["+ noise"][seed].choice == "std=0.1"
        assert table.rows["+ noise"][seed].test_map == pytest.approx(expected)
        plain_dir = os.path.join(root, "plain", f"seed{seed}")
        val, test = load_predictions(os.path.join(plain_dir, "val"), "val"), load_predictions(plain_dir)
        val_maps = {w: mean_average_precision(combined(val.scores, 0.5, w), val.targets)
                    for w in (0.0, 0.5, 1.0)}
        best = max(val_maps, key=val_maps.get)
        assert table.rows["+ prototypes"][seed].choice == f"w={best:g}"
        assert table.rows["+ prototypes"][seed].test_map == pytest.approx(
            mean_average_precision(combined(test.scores, 0.5, best), test.targets))
        assert table.rows["best combination"][seed].choice.startswith("noise std=0.1")
    text = markdown({"synthetic": table})
    assert "| + noise | " in text and "s1: " in text and "(std=0.1)" in text



def test_report_table_beyond_has_one_column_per_dataset_folder(tmp_path, capsys):
    from taidpt.cli import main as taidpt_main
    from taidpt.engine.beyond import build_table, markdown

    for dataset, quality in (("voc2007", 1.0), ("coco2014", 2.0)):
        for seed in (1, 2):
            _fake_run(str(tmp_path / dataset), "plain", seed, quality, quality)
    assert taidpt_main(["report", str(tmp_path), "--table", "beyond"]) == 0
    expected = markdown({d: build_table(str(tmp_path / d)) for d in ("coco2014", "voc2007")})
    assert (tmp_path / "report" / "beyond.md").read_text() == expected + "\n"
    assert expected in capsys.readouterr().out
    assert "| row | coco2014 test mAP | voc2007 test mAP |" in expected
    assert taidpt_main(["report", str(tmp_path), "--table", "beyond", "--seeds", "1"]) == 2
    assert "--seeds does not apply" in capsys.readouterr().err
    assert taidpt_main(["report", str(tmp_path / "voc2007" / "plain"), "--table", "beyond"]) == 2
    assert "No sweep runs under" in capsys.readouterr().err

WORLD = ["DATASET.SYNTHETIC.SEED", "1", "DATASET.SYNTHETIC.NUM_PAIRS", "60",
         "DATASET.SYNTHETIC.NUM_CAPTIONS", "160", "DATASET.SYNTHETIC.NUM_TEST", "40",
         "DATASET.SYNTHETIC.NUM_VAL", "30", "DATASET.SYNTHETIC.NUM_TRAIN", "20",
         "DATASET.SYNTHETIC.NUM_CLASSES", "6"]


@pytest.mark.slow  # ~1-2 min: three 1-epoch trainings, eight evaluations, the table
def test_beyond_table_of_a_tiny_synthetic_sweep(tmp_path, tiny_clip_file):
    """The sweep's runs (scripts/beyond_sweep.sh's variants, on a tiny world with a random tiny
    CLIP) and `taidpt report --table beyond` end to end: every row filled, every val choice
    printed."""
    import subprocess
    import sys

    from fake_data import REPO, child_env, run_train_py

    root = tmp_path / "beyond" / "synthetic"
    flags = ["--dataset-config-file", os.path.join(REPO, "configs/datasets/synthetic.yaml"),
             "--seed", "1"]
    opts = [*WORLD, "MODEL.BACKBONE.PATH", tiny_clip_file, "OPTIM.MAX_EPOCH", "1",
            "OPTIM.WARMUP_EPOCH", "-1", "DATALOADER.TRAIN_X.BATCH_SIZE", "32"]
    taidpt = ["--trainer", "TaIDPT", "--config-file",
              os.path.join(REPO, "configs/trainers/TaIDPT/tiny_synthetic.yaml"), *flags]
    taidpt_opts = [*opts, "TRAINER.TAIDPT.PROTOTYPES.ENABLED", "True", "TRAINER.TAIDPT.N_CTX", "4"]
    variants = {"plain": [], "meanshift": ["TRAINER.TAIDPT.MEAN_SHIFT", "True"],
                "noise0.05": ["TRAINER.TAIDPT.NOISE_STD", "0.05"],
                "noise0.2": ["TRAINER.TAIDPT.NOISE_STD", "0.2"]}
    for variant, variant_opts in variants.items():
        out = root / variant / "seed1"
        run_train_py(*taidpt, "--output-dir", str(out), *taidpt_opts, *variant_opts, cwd=tmp_path)
        run_train_py(*taidpt, "--eval-only", "--model-dir", str(out), "--output-dir",
                     str(out / "val"), *taidpt_opts, *variant_opts, "TEST.SPLIT", "val", cwd=tmp_path)
    zsclip = root / "zsclip" / "seed1"
    for out, split in ((zsclip, "test"), (zsclip / "val", "val")):
        run_train_py("--trainer", "ZeroshotCLIP", *flags, "--eval-only", "--output-dir", str(out),
                     *opts, "TRAINER.ZEROSHOTCLIP.PROTOTYPES.ENABLED", "True", "TEST.SPLIT", split,
                     cwd=tmp_path)
    done = subprocess.run([sys.executable, "-m", "taidpt.cli", "report", str(root.parent), "--table",
                           "beyond"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=child_env())
    assert done.returncode == 0, done.stderr[-3000:]
    table = root.parent / "report" / "beyond.md"
    assert table.read_text().strip() in done.stdout
    text = table.read_text()
    for row in ("TaI-DPT", "+ prototypes", "+ noise", "+ mean shift", "+ debiasing (val statistics)",
                "+ debiasing (transductive)", "best combination", "ZSCLIP", "ZSCLIP + prototypes"):
        assert f"| {row} | " in text, row
    assert "(w=" in text and "(std=0." in text
    assert all(f"| {variant} | " in text for variant in variants)  # training times
