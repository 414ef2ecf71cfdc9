"""Config assembly: merge order, unknown keys, reference aliases, CoOp flags."""
import fnmatch
import logging
import os

import pytest

from taidpt.config import (CHOICES, RANGES, ConfigError, ConfigValueError, _flatten, check_values,
                           get_cfg_default, setup_cfg)

import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, text):
    path.write_text(text)
    return str(path)


def test_defaults_have_dassl_keys():
    cfg = get_cfg_default()
    for key in ["DATASET.ROOT", "DATASET.NAME", "DATALOADER.TRAIN_X.BATCH_SIZE",
                "DATALOADER.TEST.BATCH_SIZE", "DATALOADER.NUM_WORKERS", "INPUT.SIZE",
                "INPUT.INTERPOLATION", "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD", "INPUT.TRANSFORMS",
                "OPTIM.NAME", "OPTIM.LR", "OPTIM.MOMENTUM", "OPTIM.WEIGHT_DECAY", "OPTIM.MAX_EPOCH",
                "OPTIM.LR_SCHEDULER", "OPTIM.WARMUP_EPOCH", "OPTIM.WARMUP_TYPE",
                "OPTIM.WARMUP_CONS_LR", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ",
                "TEST.EVALUATOR", "TEST.FINAL_MODEL", "TEST.NO_TEST", "TEST.SPLIT",
                "MODEL.BACKBONE.NAME", "MODEL.BACKBONE.PATH", "MODEL.INIT_WEIGHTS", "SEED",
                "OUTPUT_DIR", "RESUME", "USE_CUDA", "TRAINER.ZEROSHOTCLIP.TEMPLATE"]:
        node = cfg
        for part in key.split("."):
            assert part in node, f"{key}: no {part!r} in the defaults"
            node = node[part]


def test_merge_order_dataset_method_flags_opts(tmp_path):
    ds = _write(tmp_path / "ds.yaml", "OPTIM:\n  LR: 0.1\n  MAX_EPOCH: 3\nDATASET:\n  ROOT: from_ds\n")
    method = _write(tmp_path / "m.yaml", "OPTIM:\n  LR: 0.2\n")
    cfg = setup_cfg(ds, method, {"DATASET.ROOT": "from_flag", "OUTPUT_DIR": ""}, ["OPTIM.MAX_EPOCH", "7"])
    assert cfg.OPTIM.LR == 0.2  # method file wins over dataset file
    assert cfg.DATASET.ROOT == "from_flag"  # flags win over files
    assert cfg.OPTIM.MAX_EPOCH == 7  # opts win over everything
    assert cfg.OUTPUT_DIR == "./output"  # empty flags do not override
    assert cfg.is_frozen()


def test_unknown_key_names_key_and_file(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "OPTIM:\n  LEARNING_RATE: 0.1\n")
    with pytest.raises(ConfigError) as err:
        setup_cfg(bad)
    assert "OPTIM.LEARNING_RATE" in str(err.value) and str(bad) in str(err.value)


def test_unknown_opt_names_key_and_source():
    with pytest.raises(ConfigError, match="'FOO.BAR' in the command-line opts"):
        setup_cfg(opts=["FOO.BAR", "1"])


def test_odd_opts_and_bad_type_are_errors():
    with pytest.raises(ConfigError, match="odd"):
        setup_cfg(opts=["OPTIM.LR"])
    with pytest.raises(ConfigError, match="Bad value"):
        setup_cfg(opts=["OPTIM.MAX_EPOCH", "'ten'"])


def test_whole_numbers_are_accepted_for_float_keys(tmp_path):
    """``TRAINER.TAIDPT.SPATIAL_SCALE_IMAGE 20`` works, from opts and from YAML; ints stay ints."""
    path = tmp_path / "cfg.yaml"
    path.write_text("OPTIM:\n  LR: 1\n", encoding="utf-8")
    cfg = setup_cfg(str(path), opts=["TRAINER.TAIDPT.SPATIAL_SCALE_IMAGE", "20", "OPTIM.MAX_EPOCH", "3"])
    scale = cfg.TRAINER.TAIDPT.SPATIAL_SCALE_IMAGE
    assert scale == 20.0 and isinstance(scale, float)
    assert cfg.OPTIM.LR == 1.0 and isinstance(cfg.OPTIM.LR, float)
    assert cfg.OPTIM.MAX_EPOCH == 3 and isinstance(cfg.OPTIM.MAX_EPOCH, int)
    with pytest.raises(ConfigError, match="Bad value"):
        setup_cfg(opts=["OPTIM.LR", "'fast'"])


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        setup_cfg("/nonexistent/ds.yaml")


def test_coop_flags_map_to_config(tmp_path):
    args = train.build_parser().parse_args(
        ["--root", "R", "--output-dir", str(tmp_path), "--seed", "3", "--trainer", "ZeroshotCLIP",
         "--transforms", "random_flip", "--backbone", "RN101", "OPTIM.LR", "0.5"])
    cfg = train.cfg_from_args(args)
    assert (cfg.DATASET.ROOT, cfg.OUTPUT_DIR, cfg.SEED, cfg.TRAINER.NAME, cfg.MODEL.BACKBONE.NAME) == \
        ("R", str(tmp_path), 3, "ZeroshotCLIP", "RN101")
    assert list(cfg.INPUT.TRANSFORMS) == ["random_flip"] and cfg.OPTIM.LR == 0.5


def test_help_lists_every_coop_flag(capsys):
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    for flag in ["--root", "--output-dir", "--resume", "--seed", "--source-domains",
                 "--target-domains", "--transforms", "--config-file", "--dataset-config-file",
                 "--trainer", "--backbone", "--head", "--eval-only", "--model-dir", "--load-epoch",
                 "--no-train"]:
        assert flag in out


class _FakeTrainer:
    """A trainer of its own node that reads the reference's TRAINER.Caption keys."""

    reference_key_aliases = {"TRAINER.Caption.N_CTX": "TRAINER.FAKE.N_CTX"}

    @staticmethod
    def extend_cfg(cfg):
        from yacs.config import CfgNode as CN
        cfg.TRAINER.FAKE = CN()
        cfg.TRAINER.FAKE.N_CTX = 16


@pytest.fixture
def fake_trainer(monkeypatch):
    from taidpt.engine.registry import TRAINER_REGISTRY
    monkeypatch.setitem(TRAINER_REGISTRY._objects, "Fake", _FakeTrainer)
    monkeypatch.setitem(TRAINER_REGISTRY._aliases, "Fake_reference", "Fake")


@pytest.mark.parametrize("how", ["flag", "opt", "yaml", "alias"])
def test_reference_keys_go_to_the_named_trainers_node(tmp_path, fake_trainer, how):
    ref = _write(tmp_path / "ref.yaml", "TRAINER:\n  Caption:\n    N_CTX: 4\n"
                 + ("  NAME: Fake\n" if how == "yaml" else ""))
    flags = {"TRAINER.NAME": {"flag": "Fake", "alias": "Fake_reference"}.get(how, "")}
    opts = ["TRAINER.NAME", "Fake"] if how == "opt" else []
    cfg = setup_cfg(config_file=ref, flags=flags, opts=opts)
    assert cfg.TRAINER.FAKE.N_CTX == 4
    assert cfg.TRAINER.TAIDPT.N_CTX == 16


def test_reference_keys_default_to_taidpt(tmp_path, fake_trainer):
    ref = _write(tmp_path / "ref.yaml", "TRAINER:\n  Caption:\n    N_CTX: 4\n")
    for name in ("", "Caption_distill_double", "ZeroshotCLIP"):
        cfg = setup_cfg(config_file=ref, flags={"TRAINER.NAME": name})
        assert cfg.TRAINER.TAIDPT.N_CTX == 4 and cfg.TRAINER.FAKE.N_CTX == 16


def test_config_messages_reach_log_txt(tmp_path, tiny_clip_file):
    """What config assembly logs (an ignored reference key) is in the run's log.txt, once."""
    from fake_data import write_image_list

    root = tmp_path / "data"
    write_image_list(str(root), ["cat", "dog"], n=2)
    out = tmp_path / "run"
    assert train.main(["--trainer", "ZeroshotCLIP", "--root", str(root), "--output-dir", str(out),
                       "--dataset-config-file", os.path.join(REPO, "configs/datasets/image_list.yaml"),
                       "--no-train", "MODEL.BACKBONE.PATH", tiny_clip_file,
                       "TEST.EVALUATOR_ACT", "softmax"]) == 0
    log = (out / "log.txt").read_text()
    assert log.count("TEST.EVALUATOR_ACT is accepted and ignored") == 1
    assert log.index("TEST.EVALUATOR_ACT") < log.index("** Config **")


def test_held_log_records_are_replayed_when_config_fails(caplog):
    from taidpt.engine.utils import held_log_records

    caplog.set_level(logging.INFO, logger="taidpt")
    with pytest.raises(ValueError), held_log_records():
        logging.getLogger("taidpt.config").warning("held then shown")
        assert "held then shown" not in caplog.text
        raise ValueError("bad config")
    assert "held then shown" in caplog.text


def test_every_checked_pattern_names_real_keys_and_the_defaults_pass():
    keys = list(_flatten(get_cfg_default()))
    for pattern in [*CHOICES, *RANGES]:
        assert fnmatch.filter(keys, pattern), f"{pattern} matches no config key"
    check_values(get_cfg_default())


@pytest.mark.parametrize("key, value, allowed", [
    ("TEST.SPLIT", "train", "test, val"),
    ("TEST.FINAL_MODEL", "bestval", "last_step, best_val"),
    ("TRAINER.TAIDPT.GL_MERGE_RATE", "7", "[0, 1]"),
    ("TRAINER.ZEROSHOTCLIP.GL_MERGE_RATE", "-0.1", "[0, 1]"),
    ("OPTIM.LR", "-1", "(0, inf)"),
    ("OPTIM.LR", "0", "(0, inf)"),
    ("DATALOADER.TRAIN_X.BATCH_SIZE", "0", "[1, inf)"),
    ("DATALOADER.TEST.BATCH_SIZE", "-3", "[1, inf)"),
    ("TRAINER.TAIDPT.LOSS", "sigmoid", "double_ranking, ranking, bce, asl, ranking_scale2, asl_mean, focal"),
    ("TRAINER.DUALCOOP.LOSS", "ranking", "asl, fewshot"),
    ("TRAINER.COOPML.PREC", "bf16", "fp32, fp16, amp"),
    ("TRAINER.DUALCOOP.CLASS_TOKEN_POSITION", "start", "end, middle, front"),
    ("INPUT.TRANSFORMS", "['random_flip', 'autoaugment']", "random_flip"),
    ("DATASET.CAPTIONS.SOURCE", "txt", "'', text, jsonl"),
    ("DATASET.PARTIAL_PROB", "0", "(0, 1]"),
    ("TRAIN.PRINT_FREQ", "0", "[1, inf)"),
])
def test_bad_values_are_refused_when_frozen(key, value, allowed):
    with pytest.raises(ConfigValueError) as err:
        setup_cfg(opts=[key, value])
    message = str(err.value)
    assert message.startswith(f"{key} must ") and allowed in message and "got" in message
    assert isinstance(err.value, ValueError) and isinstance(err.value, ConfigError)
    assert setup_cfg(opts=[key, value], freeze=False)  # checked at freezing only


def test_edge_values_are_accepted():
    cfg = setup_cfg(opts=["TRAINER.TAIDPT.GL_MERGE_RATE", "0", "TRAINER.ZEROSHOTCLIP.GL_MERGE_RATE",
                          "1", "DATALOADER.TRAIN_X.BATCH_SIZE", "1", "DATASET.PARTIAL_PROB", "1",
                          "TEST.FINAL_MODEL", "best_val", "TEST.SPLIT", "val"])
    assert cfg.TRAINER.TAIDPT.GL_MERGE_RATE == 0.0 and cfg.TEST.SPLIT == "val"
