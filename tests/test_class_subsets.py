"""Class subsets of a dataset (DATASET.COCO2014.CLASSES, DATASET.SYNTHETIC.CLASSES): the paper's
Table 2 evaluates on COCO's 16 novel classes (SPEC 7), on the fake COCO tree of fake_data."""
import numpy as np
import pytest

import fake_data
from taidpt.config import ConfigValueError, setup_cfg
from taidpt.datasets.base import build_dataset, label_matrix
from taidpt.datasets.coco2014 import NOVEL_CLASSES
from taidpt.datasets.synthetic.dataset import subset_classnames

SPEC7_NOVEL = ["bicycle", "boat", "stop sign", "bird", "backpack", "frisbee", "snowboard", "surfboard",
               "cup", "fork", "spoon", "broccoli", "chair", "keyboard", "microwave", "vase"]


def coco(root, subset, **keys):
    opts = ["DATASET.NAME", "COCO2014", "DATASET.ROOT", str(root), "DATASET.COCO2014.CLASSES", subset]
    for key, value in keys.items():
        opts += [key, value]
    return build_dataset(setup_cfg(opts=opts))


@pytest.fixture
def coco_tree(tmp_path):
    return tmp_path, fake_data.write_fake_coco(str(tmp_path), n_val=12, n_train=4)


def test_novel16_keeps_the_16_spec_classes_and_their_label_columns(coco_tree):
    root, expected = coco_tree
    full, novel = coco(root, "all"), coco(root, "novel16")
    assert sorted(NOVEL_CLASSES) == sorted(SPEC7_NOVEL)
    columns = [i for i, label in enumerate(fake_data.COCO.labels) if label in SPEC7_NOVEL]
    assert len(columns) == 16 and novel.num_classes == 16
    assert novel.classnames == [full.classnames[c] for c in columns]  # prompt names, id order
    assert novel.synonyms == [full.synonyms[c] for c in columns]
    np.testing.assert_array_equal(label_matrix(novel.test), label_matrix(full.test)[:, columns])
    np.testing.assert_array_equal(label_matrix(novel.test), expected["val2014"][1][:, columns])
    assert [i.impath for i in novel.test] == [i.impath for i in full.test]  # every image stays
    np.testing.assert_array_equal(label_matrix(novel.val), label_matrix(novel.test)[::10])


def test_base64_is_the_complement_and_train_images_are_cut_too(coco_tree):
    root, _ = coco_tree
    full = coco(root, "all", **{"DATASET.CAPTIONS.SOURCE": ""})
    base = coco(root, "base64", **{"DATASET.CAPTIONS.SOURCE": ""})
    novel = coco(root, "novel16", **{"DATASET.CAPTIONS.SOURCE": ""})
    assert base.num_classes == 64 and not set(base.classnames) & set(novel.classnames)
    assert sorted(base.classnames + novel.classnames) == sorted(full.classnames)
    columns = [full.classnames.index(name) for name in base.classnames]
    assert columns == sorted(columns)
    np.testing.assert_array_equal(label_matrix(base.train_x), label_matrix(full.train_x)[:, columns])


def test_bad_subset_is_refused_with_the_choices():
    with pytest.raises(ConfigValueError, match="DATASET.COCO2014.CLASSES must be one of all, novel16, base64"):
        setup_cfg(opts=["DATASET.COCO2014.CLASSES", "novel"])
    with pytest.raises(ConfigValueError, match="DATASET.SYNTHETIC.CLASSES must be one of all, novel, base"):
        setup_cfg(opts=["DATASET.SYNTHETIC.CLASSES", "novel16"])


@pytest.mark.parametrize("count, novel", [(14, 4), (8, 2), (5, 2), (1, 1)])
def test_synthetic_novel_is_the_last_quarter(count, novel):
    names = [f"c{i}" for i in range(count)]
    assert subset_classnames(names, "novel") == names[count - novel:]
    assert subset_classnames(names, "base") == names[:count - novel]
    assert subset_classnames(names, "all") == names
