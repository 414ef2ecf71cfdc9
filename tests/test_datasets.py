"""Image datasets, caption sources and the caption cache, on fake trees in the official formats."""
import argparse
import json
import logging
import os
import re
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import fake_data
from taidpt.cli.prepare import add_parser, run
from taidpt.datasets import captions
from taidpt.datasets.base import DATASET_REGISTRY, build_dataset, label_matrix
from taidpt.datasets.coco2014 import COCO2014
from taidpt.datasets.image_list import MultiLabelImageList
from taidpt.datasets.nuswide import NUSWIDE, image_relpath
from taidpt.datasets.voc2007 import VOC2007
from taidpt.engine.defaults import get_engine_defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_cfg(root, name="", **captions_opts):
    cfg = get_engine_defaults()
    NUSWIDE.extend_cfg(cfg)
    COCO2014.extend_cfg(cfg)
    cfg.DATASET.ROOT, cfg.DATASET.NAME = str(root), name
    for key, value in captions_opts.items():
        cfg.DATASET.CAPTIONS[key.upper()] = value
    return cfg


@pytest.fixture
def voc_root(tmp_path):
    return tmp_path, fake_data.write_fake_voc(str(tmp_path))


@pytest.fixture
def coco_root(tmp_path):
    return tmp_path, fake_data.write_fake_coco(str(tmp_path))


@pytest.fixture
def nus_root(tmp_path):
    fake_data.write_fake_openimages(str(tmp_path))
    return tmp_path, fake_data.write_fake_nuswide(str(tmp_path))


@pytest.mark.parametrize("name,cls", [
    ("VOC2007", VOC2007), ("VOC2007_distill", VOC2007), ("VOC2007_partial", VOC2007),
    ("COCO2014", COCO2014), ("COCO2014_distill", COCO2014), ("COCO2014_partial", COCO2014),
    ("NUSWIDE", NUSWIDE), ("nuswide_distill_limit", NUSWIDE), ("nuswide_partial", NUSWIDE),
    ("MultiLabelImageList", MultiLabelImageList),
])
def test_registered_names(name, cls):
    assert DATASET_REGISTRY.get(name) is cls


# ---------------------------------------------------------------- VOC 2007
def test_voc_labels_classes_and_paths(voc_root):
    root, expected = voc_root
    dataset = build_dataset(make_cfg(root, "VOC2007_distill", source="coco"))
    ids, labels = expected["test"]
    np.testing.assert_array_equal(label_matrix(dataset.test), labels)
    assert (label_matrix(dataset.test) == 0).sum() == 3  # difficult kept as 0
    assert dataset.classnames[:4] == ["aeroplane", "bicycle", "bird", "boat"]
    assert {"diningtable", "pottedplant", "tvmonitor", "motorbike"} <= set(dataset.classnames)
    assert [item.impath for item in dataset.test] == [
        os.path.join(root, "VOCdevkit", "VOC2007", "JPEGImages", f"{i}.jpg") for i in ids]
    assert dataset.val is dataset.test and dataset.train_x == []
    assert dataset.caption_path == os.path.join(root, "COCO", "annotations",
                                                "captions_train2017.json")
    assert dataset.synonyms[14][:3] == ["person", "people", "man"]


def test_voc_trainval_is_read_for_image_training(voc_root):
    root, expected = voc_root
    dataset = VOC2007(make_cfg(root))
    np.testing.assert_array_equal(label_matrix(dataset.train_x), expected["trainval"][1])


def test_voc_missing_root_and_file(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        VOC2007(make_cfg(tmp_path / "nowhere"))
    assert str(tmp_path / "nowhere") in str(err.value) and "--root" in str(err.value)
    root, _ = voc_root
    missing = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "cow_test.txt"
    missing.unlink()
    with pytest.raises(FileNotFoundError) as err:
        VOC2007(make_cfg(root, source="coco"))
    message = str(err.value)
    assert str(missing) in message and "ImageSets/Main/aeroplane_test.txt" in message
    assert "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/" in message


def test_voc_missing_image(voc_root):
    root, _ = voc_root
    (root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 6 images listed in .*_test.txt are missing, "
                                                r"e\.g\. .*000002\.jpg"):
        VOC2007(make_cfg(root, source="coco"))


@pytest.mark.parametrize("content,problem", [
    ("000001 -1\n000002 2\n", r"line 2: expected '<image id> <1\|0\|-1>'"),
    ("000001 -1\n", "does not list the same images"),
])
def test_voc_bad_label_file(voc_root, content, problem):
    root, _ = voc_root
    path = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "dog_test.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as err:
        VOC2007(make_cfg(root, source="coco"))
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- COCO 2014
def test_coco_category_id_order_with_gaps(coco_root):
    root, expected = coco_root
    dataset = build_dataset(make_cfg(root, "COCO2014_distill", source="coco"))
    names, labels = expected["val2014"]
    np.testing.assert_array_equal(label_matrix(dataset.test), labels)
    assert (label_matrix(dataset.test)[-1] == -1).all()  # an image without annotations
    assert [os.path.basename(item.impath) for item in dataset.test] == names
    assert dataset.num_classes == 80 and dataset.classnames[-1] == "toothbrush"
    assert dataset.classnames[3:5] == ["motor bike", "aeroplane"]
    assert dataset.classnames[32] == "sports ball" and dataset.classnames[60] == "dining table"
    assert dataset.val == dataset.test[::10] and dataset.train_x == []


def test_coco_annotation_category_ids_map_to_columns(coco_root):
    root, _ = coco_root
    path = root / "COCO" / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"] = [{"id": 1, "image_id": data["images"][0]["id"], "category_id": 90,
                            "iscrowd": 1, "area": 1.0, "bbox": [0, 0, 1, 1]},
                           {"id": 2, "image_id": data["images"][0]["id"], "category_id": 13,
                            "iscrowd": 0, "area": 1.0, "bbox": [0, 0, 1, 1]}]
    path.write_text(json.dumps(data))
    label = COCO2014(make_cfg(root, source="coco")).test[0].label
    assert np.flatnonzero(label > 0).tolist() == [11, 79]  # stop sign (id 13), toothbrush (90)


def test_coco_train2014_for_image_training(coco_root):
    root, expected = coco_root
    dataset = COCO2014(make_cfg(root))
    np.testing.assert_array_equal(label_matrix(dataset.train_x), expected["train2014"][1])


def test_coco_errors(coco_root):
    root, _ = coco_root
    path = root / "COCO" / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "categories": data["categories"][1:]}))
    with pytest.raises(ValueError, match="not the 80 COCO categories") as err:
        COCO2014(make_cfg(root, source="coco"))
    assert str(path) in str(err.value)
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match="not a valid COCO instances JSON"):
        COCO2014(make_cfg(root, source="coco"))
    path.unlink()
    with pytest.raises(FileNotFoundError, match="https://cocodataset.org/#download") as err:
        COCO2014(make_cfg(root, source="coco"))
    assert str(path) in str(err.value) and "annotations/instances_val2014.json" in str(err.value)


# ---------------------------------------------------------------- NUS-WIDE
def test_nuswide_labels_and_backslash_paths(nus_root):
    root, expected = nus_root
    dataset = build_dataset(make_cfg(root, "nuswide_distill_limit", source="openimages"))
    paths, labels = expected["Test"]
    np.testing.assert_array_equal(label_matrix(dataset.test), labels)
    assert [item.impath for item in dataset.test] == [
        os.path.join(root, "NUSWIDE", "Flickr", p) for p in paths]
    assert dataset.num_classes == 81 and dataset.classnames[:3] == ["airport", "animal", "beach"]
    assert dataset.train_x == []
    assert dataset.caption_path.endswith(os.path.join("OpenImages",
                                                      "open_images_train_v6_captions.jsonl"))
    np.testing.assert_array_equal(label_matrix(NUSWIDE(make_cfg(root)).train_x),
                                  expected["Train"][1])


@pytest.mark.parametrize("line,relpath", [
    ("actor\\0001_2124494179.jpg", "actor/0001_2124494179.jpg"),
    ("C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg\r", "actor/0001_2124494179.jpg"),
])
def test_nuswide_image_relpath(line, relpath):
    assert image_relpath(line) == relpath


def test_nuswide_missing_images_fail_or_are_skipped(nus_root):
    root, _ = nus_root
    missing = root / "NUSWIDE" / "Flickr" / "airport" / "0001_1001.jpg"
    missing.unlink()
    with pytest.raises(FileNotFoundError, match="TestImagelist.txt are missing") as err:
        NUSWIDE(make_cfg(root, source="openimages"))
    assert str(missing) in str(err.value) and "Flickr/actor/0001_2124494179.jpg" in str(err.value)
    cfg = make_cfg(root, source="openimages")
    cfg.DATASET.NUSWIDE.SKIP_MISSING = True
    assert len(NUSWIDE(cfg).test) == 4


@pytest.mark.parametrize("content,problem", [
    ("0\n1\n", "has 2 lines but"),
    ("0\n1\n0\n2\n0\n", "line 4: expected 0 or 1, got '2'"),
])
def test_nuswide_bad_label_file(nus_root, content, problem):
    root, _ = nus_root
    path = root / "NUSWIDE" / "TrainTestLabels" / "Labels_zebra_Test.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as err:
        NUSWIDE(make_cfg(root, source="openimages"))
    assert str(path) in str(err.value)


# ---------------------------------------------------------------- MultiLabelImageList
def image_list_cfg(root, files, **keys):
    cfg = make_cfg(root, "MultiLabelImageList")
    cfg.DATASET.CLASSNAMES_FILE, cfg.DATASET.TEST_LIST = files["classnames"], files["test"]
    for key, value in keys.items():
        cfg.DATASET[key] = value
    return cfg


def test_image_list(tmp_path):
    files = fake_data.write_image_list(str(tmp_path), ["cat", "dog", "bird"], n=5,
                                       synonyms=[["cat", "kitten"], ["dog", "puppy"], ["bird"]])
    dataset = build_dataset(image_list_cfg(tmp_path, files, TRAIN_LIST=files["train"]))
    paths, labels = files["test_items"]
    np.testing.assert_array_equal(label_matrix(dataset.test), labels)
    assert [item.impath for item in dataset.test] == [os.path.join(tmp_path, p) for p in paths]
    np.testing.assert_array_equal(label_matrix(dataset.train_x), files["train_items"][1])
    assert dataset.classnames == ["cat", "dog", "bird"] and dataset.val is dataset.test
    assert dataset.synonyms == [["cat", "kitten"], ["dog", "puppy"], ["bird"]]


@pytest.mark.parametrize("lines,problem", [
    (["# comment", "images/test_0000.png,cat|lion"], "line 2: unknown label 'lion'"),
    (["images/test_0000.png cat"], "line 1: expected 'image_path,label"),
])
def test_image_list_bad_lines(tmp_path, lines, problem):
    files = fake_data.write_image_list(str(tmp_path), ["cat", "dog"], n=2)
    (tmp_path / "test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=problem) as err:
        MultiLabelImageList(image_list_cfg(tmp_path, files))
    assert str(tmp_path / "test.csv") in str(err.value)


def test_image_list_config_and_file_errors(tmp_path):
    files = fake_data.write_image_list(str(tmp_path), ["cat", "dog"], n=2)
    with pytest.raises(ValueError, match="needs DATASET.TEST_LIST"):
        MultiLabelImageList(image_list_cfg(tmp_path, files, TEST_LIST=""))
    (tmp_path / "classnames.txt").write_text("cat\ndog|puppy\ncat\n")
    with pytest.raises(ValueError, match="line 3: class 'cat' is listed twice"):
        MultiLabelImageList(image_list_cfg(tmp_path, files))
    (tmp_path / "classnames.txt").unlink()
    with pytest.raises(FileNotFoundError, match="classnames.txt does not exist"):
        MultiLabelImageList(image_list_cfg(tmp_path, files))


# ---------------------------------------------------------------- caption sources
@pytest.mark.parametrize("per_image,count", [(1, 4), (2, 6), (-1, 6)])
def test_coco_captions_per_image(tmp_path, per_image, count):
    path = fake_data.write_coco_captions(str(tmp_path))
    sentences = captions.read_captions("coco", path, per_image)
    assert len(sentences) == count
    assert sentences[0] == "A man riding a motor bike down a dirt road."
    if per_image == 1:
        assert "A person on a motorcycle next to a car." not in sentences
        assert sentences[3] == "A red carpet in an empty hall."


def test_text_and_jsonl_sources(tmp_path):
    (tmp_path / "a.txt").write_text("A dog.\n\n  A cat on a mat.  \n")
    assert captions.read_captions("text", str(tmp_path / "a.txt")) == ["A dog.", "A cat on a mat."]
    (tmp_path / "a.jsonl").write_text('{"caption": "A dog."}\n\n{"caption": "A cat.", "x": 1}\n')
    assert captions.read_captions("jsonl", str(tmp_path / "a.jsonl")) == ["A dog.", "A cat."]
    path = fake_data.write_fake_openimages(str(tmp_path))
    assert captions.read_captions("openimages", path) == fake_data.OPENIMAGES_CAPTIONS


@pytest.mark.parametrize("source,content,problem", [
    ("jsonl", '{"caption": "A dog."}\n{"text": "A cat."}\n', "line 2 is not a JSON object with"),
    ("openimages", '{"caption": "A dog."}\n{"caption": \n', "line 2 is not a JSON object"),
    ("jsonl", '{"caption": 3}\n', "line 1: 'caption' is not a string"),
    ("coco", '{"annotations": [{"image_id": 1}]}', "not a COCO captions JSON"),
    ("coco", '{"annotations": [', "not a COCO captions JSON"),
])
def test_corrupt_caption_files(tmp_path, source, content, problem):
    path = tmp_path / "captions.data"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as err:
        captions.read_captions(source, str(path))
    assert f"Caption file {path} is unreadable" in str(err.value)


def test_non_utf8_text(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"A dog.\n\xff\xfe\n")
    with pytest.raises(ValueError, match="a.txt is unreadable: not UTF-8 text"):
        captions.read_captions("text", str(tmp_path / "a.txt"))


@pytest.mark.parametrize("source,hint", [
    ("coco", "https://cocodataset.org/#download"),
    ("openimages", "https://google.github.io/localized-narratives/"),
])
def test_missing_caption_file(tmp_path, source, hint):
    with pytest.raises(FileNotFoundError, match=hint) as err:
        captions.read_captions(source, str(tmp_path / "missing.json"))
    assert str(tmp_path / "missing.json") in str(err.value)


def test_source_errors(tmp_path):
    (tmp_path / "a.txt").write_text("A dog.\n")
    dataset = SimpleNamespace(classnames=["dog"], synonyms=None, caption_path=None)
    with pytest.raises(ValueError, match="DATASET.CAPTIONS.SOURCE is empty"):
        captions.build_caption_corpus(make_cfg(tmp_path, path="a.txt"), dataset)
    with pytest.raises(ValueError, match="'tsv' is not supported; use one of text, jsonl, coco"):
        captions.build_caption_corpus(make_cfg(tmp_path, source="tsv", path="a.txt"), dataset)
    with pytest.raises(ValueError, match="No caption file: set DATASET.CAPTIONS.PATH"):
        captions.build_caption_corpus(make_cfg(tmp_path, source="text"), dataset)


def test_caption_path_resolution(tmp_path):
    dataset = SimpleNamespace(caption_path="/data/default.json")
    assert captions.caption_file(make_cfg(tmp_path, path="c/a.txt"), dataset) == \
        str(tmp_path / "c" / "a.txt")
    assert captions.caption_file(make_cfg(tmp_path, path="/abs/a.txt"), dataset) == "/abs/a.txt"
    assert captions.caption_file(make_cfg(tmp_path), dataset) == "/data/default.json"


# ---------------------------------------------------------------- corpora on the benchmarks
def test_voc_corpus_from_coco_captions(voc_root):
    root, _ = voc_root
    fake_data.write_coco_captions(str(root))
    dataset = VOC2007(make_cfg(root, source="coco"))
    corpus = captions.build_caption_corpus(make_cfg(root, source="coco"), dataset, progress=False)
    assert corpus.sentences[:1] == ["A man riding a motor bike down a dirt road."]
    assert corpus.labels[0].nonzero().flatten().tolist() == [13, 14]  # motorbike, person
    assert corpus.stats["read"] == 4 and corpus.stats["captions"] == 1
    assert len(corpus) == 1 + 20 * 89


def test_nuswide_corpus_with_limit(nus_root):
    root, _ = nus_root
    cfg = make_cfg(root, source="openimages", limit_per_class=1, templates=False)
    corpus = captions.build_caption_corpus(cfg, NUSWIDE(cfg), progress=False)
    named = [{corpus.classnames[i] for i in row.nonzero().flatten().tolist()}
             for row in corpus.labels]
    # Narrative 3 mentions no class; the others each own a different rarest class, so all stay.
    assert corpus.stats["labelled"] == 3 and corpus.stats["after_limit"] == 3
    assert {"dog", "animal", "grass", "tree", "sky"} == named[0]
    assert {"boats", "water", "bridge"} == named[1]
    assert {"person", "road", "cars", "vehicle", "buildings"} == named[2]


# ---------------------------------------------------------------- cache
FRUIT = SimpleNamespace(classnames=["apple", "banana"], synonyms=[["apple"], ["banana"]],
                        caption_path=None)


def fruit_cfg(root, **opts):
    return make_cfg(root, source="text", path="fruit.txt", **opts)


@pytest.fixture
def fruit_root(tmp_path):
    (tmp_path / "fruit.txt").write_text("An apple.\nA banana and an apple.\nA plain wall.\n")
    return tmp_path


def test_cache_is_reused(fruit_root, monkeypatch):
    path, stats = captions.prepare(fruit_cfg(fruit_root), FRUIT, progress=False)
    assert stats["cache"] == "built" and stats["dropped"] == 1 and os.path.isfile(path)
    assert path.startswith(os.path.join(os.environ["TAIDPT_CACHE"], "captions"))
    built = captions.build_caption_corpus(fruit_cfg(fruit_root), FRUIT, progress=False)
    monkeypatch.setattr(captions, "read_captions", lambda *a: pytest.fail("cache not used"))
    reused = captions.build_caption_corpus(fruit_cfg(fruit_root), FRUIT, progress=False)
    assert reused.stats["cache"] == "reused" and reused.sentences == built.sentences
    assert torch.equal(reused.tokens, built.tokens) and reused.tokens.dtype == torch.long
    assert torch.equal(reused.labels, built.labels) and reused.labels.dtype == torch.float32


@pytest.mark.parametrize("change", ["file", "classes", "synonyms", "max_captions", "templates",
                                    "context_length", "cache_dir"])
def test_cache_key_changes_rebuild(fruit_root, change):
    cfg, dataset, length = fruit_cfg(fruit_root), FRUIT, 77
    before = captions.prepare(cfg, dataset, length, progress=False)[0]
    if change == "file":
        (fruit_root / "fruit.txt").write_text("An apple.\nA banana.\nA banana.\n")
    elif change == "classes":
        dataset = SimpleNamespace(classnames=["apple"], synonyms=[["apple"]], caption_path=None)
    elif change == "synonyms":
        dataset = SimpleNamespace(classnames=FRUIT.classnames, caption_path=None,
                                  synonyms=[["apple", "pie"], ["banana"]])
    elif change == "context_length":
        length = 32
    elif change == "cache_dir":
        cfg = fruit_cfg(fruit_root, cache_dir="cache")
    else:
        cfg = fruit_cfg(fruit_root, **{change: {"max_captions": 1, "templates": False}[change]})
    after, stats = captions.prepare(cfg, dataset, length, progress=False)
    assert after != before and stats["cache"] == "built"
    if change == "file":
        assert stats["labelled"] == 3
    if change == "cache_dir":
        assert after.startswith(os.path.join(fruit_root, "cache", "captions"))


def test_corrupt_cache_is_rebuilt(fruit_root, caplog):
    path = captions.prepare(fruit_cfg(fruit_root), FRUIT, progress=False)[0]
    with open(path, "wb") as f:
        f.write(b"truncated")
    with caplog.at_level(logging.WARNING):
        stats = captions.prepare(fruit_cfg(fruit_root), FRUIT, progress=False)[1]
    assert stats["cache"] == "built" and "Ignoring unreadable caption cache" in caplog.text
    assert captions.prepare(fruit_cfg(fruit_root), FRUIT, progress=False)[1]["cache"] == "reused"


def test_no_half_built_cache_and_never_the_cwd(fruit_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (fruit_root / "fruit.txt").write_bytes(b"An apple.\n\xff\n")
    with pytest.raises(ValueError, match="fruit.txt is unreadable"):
        captions.prepare(fruit_cfg(fruit_root, cache_dir="cache"), FRUIT, progress=False)
    assert not os.path.exists(fruit_root / "cache" / "captions") or \
        os.listdir(fruit_root / "cache" / "captions") == []
    assert sorted(os.listdir(tmp_path)) == ["fruit.txt"]


# ---------------------------------------------------------------- taidpt prepare
def parse(argv):
    parser = argparse.ArgumentParser(prog="taidpt")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_prepare_command(coco_root, capsys):
    root, _ = coco_root
    argv = ["prepare", "--dataset-config-file",
            os.path.join(REPO, "configs", "datasets", "coco2014_caption.yaml"), "--root", str(root)]
    args = parse(argv + ["DATASET.CAPTIONS.PER_IMAGE", "-1"])
    assert args.func is run and args.context_length == 0  # 0: read from the configured CLIP
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "Caption cache (built)" in out and "captions_train2017.json" in out
    assert "dropped (no class)" in out and "template sentences" in out
    for name, count in (("read", 6), ("captions kept", 5), ("items", 7125), ("motor bike", 2)):
        assert re.search(rf"^{name} +{count}$", out, re.MULTILINE)
    run(parse(argv + ["DATASET.CAPTIONS.PER_IMAGE", "-1"]))
    assert "Caption cache (reused)" in capsys.readouterr().out
    run(parse(argv + ["--force", "DATASET.CAPTIONS.PER_IMAGE", "-1"]))
    assert "Caption cache (built)" in capsys.readouterr().out


def test_prepare_reads_the_context_length_of_the_configured_clip(coco_root, capsys, tiny_clip_file):
    root, _ = coco_root
    run(parse(["prepare", "--dataset-config-file",
               os.path.join(REPO, "configs", "datasets", "coco2014_caption.yaml"), "--root", str(root),
               "MODEL.BACKBONE.PATH", tiny_clip_file]))
    path = re.search(r"Caption cache \(built\): (\S+)", capsys.readouterr().out).group(1)
    assert torch.load(path, weights_only=False)["tokens"].shape[1] == 32


@pytest.mark.parametrize("name", ["voc2007_caption", "coco2014_caption", "nuswide_caption"])
def test_shipped_dataset_configs(name):
    from taidpt.config import setup_cfg

    cfg = setup_cfg(os.path.join(REPO, "configs", "datasets", f"{name}.yaml"))
    assert cfg.DATASET.CAPTIONS.SOURCE in ("coco", "openimages")
    assert cfg.DATASET.CAPTIONS.LIMIT_PER_CLASS == (1000 if name.startswith("nus") else -1)
    assert DATASET_REGISTRY.get(cfg.DATASET.NAME)
