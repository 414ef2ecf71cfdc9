"""Small fake copies of the benchmark trees, in the exact official file formats.

Each ``write_*`` function writes under ``root`` (the ``DATASET.ROOT``) and returns what a test
needs to check the loaders: image paths (relative to ``root``) and the expected label matrices
(``N x C`` float32 in {1, 0, -1}). Images are tiny solid-colour JPEG/PNG files.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from taidpt.datasets._common import load_label_set

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NETBLOCK = os.path.join(REPO, "tests", "netblock")  # on every child's PYTHONPATH: no network


def child_env(*python_path: str, **variables: str) -> Dict[str, str]:
    """The environment of a Python child of a test: offline, ``PYTHONPATH`` = ``python_path``
    (default: the repository) and the network block (``tests/netblock``), plus ``variables``."""
    path = os.pathsep.join([*(python_path or (REPO,)), NETBLOCK])
    return dict(os.environ, TAIDPT_OFFLINE="1", **variables, PYTHONPATH=path)


def network_env() -> Dict[str, str]:
    """The environment of a child that must reach a package registry (pip): without the block."""
    path = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != NETBLOCK]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(path))

# A toy label set and caption file for end-to-end runs on an image list.
TOY_CLASSES = ["cat", "dog", "car"]
TOY_SYNONYMS = [["cat", "kitten"], ["dog", "puppy"], ["car", "automobile"]]
TOY_CAPTIONS = ["a cat sleeping on a sofa", "two dogs playing in a park", "a red car parked outside",
                "a kitten and a puppy", "a dog chasing a car", "cars on a highway at night",
                "a cat watching a dog", "an automobile near a house", "a puppy in the grass",
                "the carpet is blue"]


def run_train_py(*args: str, cwd, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` offline in a subprocess; with ``check``, a failure shows its output."""
    env = child_env()
    run = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    if check:
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return run


def epoch_losses(log: str) -> List[float]:
    """Mean loss of each epoch in a training log: the running average on its last logged batch."""
    last = {}
    for epoch, batch, total, avg in re.findall(
            r"epoch \[(\d+)/\d+\] batch \[(\d+)/(\d+)\] loss [\d.]+ \(([\d.]+)\)", log):
        if batch == total:
            last[int(epoch)] = float(avg)
    return [last[e] for e in sorted(last)]


VOC = load_label_set("voc2007")
COCO = load_label_set("coco2014")
NUS = load_label_set("nuswide")

COCO_CAPTIONS = [  # (image_id, caption) in file order; image 9 has two captions
    (9, "A man riding a motor bike down a dirt road."),
    (25, "Two giraffes standing next to a tall tree."),
    (9, "A person on a motorcycle next to a car."),
    (30, "A bowl of soup on a wooden counter."),
    (42, "A red carpet in an empty hall."),
    (42, "Hot dogs and a pizza on a table."),
]
OPENIMAGES_CAPTIONS = [
    "In this image we can see a dog on the grass. In the background there are trees and sky.",
    "In this picture there is a boat on the water and a bridge.",
    "This is a plain white wall.",
    "In this image we can see a person standing on the road near a car and buildings.",
]


def write_image(path: str, size: int = 16, seed: int = 0) -> None:
    """A solid-colour image; the format follows the extension (.jpg / .png)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    color = tuple(int(v) for v in np.random.RandomState(seed).randint(0, 256, size=3))
    Image.new("RGB", (size, size), color).save(path)


def _write_text(path: str, lines: Sequence[str], newline: str = "\n") -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("".join(line + newline for line in lines))


def _pattern(n: int, num_classes: int, offset: int) -> np.ndarray:
    """Deterministic labels: image i is positive for two classes, the rest negative."""
    labels = -np.ones((n, num_classes), dtype=np.float32)
    for i in range(n):
        labels[i, [(i + offset) % num_classes, (3 * i + offset + 1) % num_classes]] = 1
    return labels


def write_fake_voc(root: str, n_test: int = 6, n_trainval: int = 4) -> Dict[str, Tuple]:
    """``VOCdevkit/VOC2007`` with JPEGImages, Annotations (XML) and ImageSets/Main files.

    Even test images also have a difficult-only class (label 0). ``trainval.txt`` lists the
    trainval ids in an order that is not sorted (the class files are sorted). Returns, per split
    (``test`` / ``trainval``), ``(image ids, N x 20 labels)`` in ``<split>.txt`` order.
    """
    base = os.path.join(root, "VOCdevkit", "VOC2007")
    out = {}
    for split, n, first in (("test", n_test, 1), ("trainval", n_trainval, 1000)):
        ids = [f"{first + i:06d}" for i in range(n)]
        labels = _pattern(n, len(VOC.labels), offset=first)
        for i in range(0, n, 2):
            labels[i, int(np.flatnonzero(labels[i] < 0)[0])] = 0
        for image_id, label in zip(ids, labels):
            write_image(os.path.join(base, "JPEGImages", f"{image_id}.jpg"), seed=int(image_id))
            _write_voc_xml(os.path.join(base, "Annotations", f"{image_id}.xml"), image_id, label)
        for c, cls in enumerate(VOC.labels):
            _write_text(os.path.join(base, "ImageSets", "Main", f"{cls}_{split}.txt"),
                        [f"{image_id} {int(v):2d}" for image_id, v in zip(ids, labels[:, c])])
        order = np.arange(n) if split == "test" else np.roll(np.arange(n)[::-1], 1)
        ids, labels = [ids[i] for i in order], labels[order]
        _write_text(os.path.join(base, "ImageSets", "Main", f"{split}.txt"), ids)
        out[split] = (ids, labels)
    return out


def write_voc_partial(root: str, labels: np.ndarray, p: float, seed: int = 0,
                      directory: str = os.path.join("partial", "VOC2007", "partial-labels")
                      ) -> np.ndarray:
    """``<directory>/train_proportion_{p}.txt`` (relative to ``root`` unless absolute): the
    ``N x 20`` trainval ``labels`` (trainval.txt order) with each label kept with probability
    ``p``, else 0, as comma-separated rows. Returns the written rows."""
    rows = np.where(np.random.RandomState(seed).random_sample(labels.shape) < p, labels, 0)
    _write_text(os.path.join(root, directory, f"train_proportion_{p}.txt"),
                [",".join(str(int(v)) for v in row) for row in rows])
    return rows.astype(np.float32)


def _write_voc_xml(path: str, image_id: str, label: np.ndarray) -> None:
    objects = "".join(
        f"<object><name>{VOC.labels[c]}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(label[c] == 0)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
        f"<xmax>8</xmax><ymax>8</ymax></bndbox></object>"
        for c in np.flatnonzero(label >= 0))
    _write_text(path, [f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
                       f"<size><width>16</width><height>16</height><depth>3</depth></size>"
                       f"<segmented>0</segmented>{objects}</annotation>"])


def write_fake_coco(root: str, n_val: int = 5, n_train: int = 3,
                    captions: Sequence[Tuple[int, str]] = COCO_CAPTIONS) -> Dict[str, object]:
    """``COCO/annotations`` (instances_{val,train}2014.json, captions_train2017.json) + images.

    Categories carry the real ids (1..90 with gaps) and are written in reverse order; the last
    val image has no annotation. The first image of each split also has a box 0.5 px wide of a
    class it otherwise lacks: positive in val2014, dropped in train2014 (SPEC 7). Returns per
    split ``(file names, N x 80 labels)`` and ``"captions"``, the caption file path.
    """
    categories = [{"supercategory": "thing", "id": cid, "name": name}
                  for cid, name in zip(COCO.ids, COCO.labels)][::-1]
    out: Dict[str, object] = {}
    for split, n, first in (("val2014", n_val, 42), ("train2014", n_train, 9)):
        labels = _pattern(n, len(COCO.labels), offset=first)
        if split == "val2014":
            labels[-1] = -1
        images, annotations = [], []
        for i in range(n):
            image_id = first + 7 * i
            name = f"COCO_{split}_{image_id:012d}.jpg"
            write_image(os.path.join(root, "COCO", split, name), seed=image_id)
            images.append({"id": image_id, "file_name": name, "width": 16, "height": 16})
            for c in np.flatnonzero(labels[i] > 0):
                annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                    "category_id": COCO.ids[c], "iscrowd": 0, "area": 4.0,
                                    "bbox": [1, 1, 2, 2], "segmentation": [[1, 1, 3, 1, 3, 3]]})
        thin = int(np.flatnonzero(labels[0] < 0)[0])
        annotations.append({"id": len(annotations) + 1, "image_id": first,
                            "category_id": COCO.ids[thin], "iscrowd": 0, "area": 1.0,
                            "bbox": [1, 1, 0.5, 2], "segmentation": [[1, 1, 1.5, 1, 1.5, 3]]})
        if split == "val2014":
            labels[0, thin] = 1
        _write_json(os.path.join(root, "COCO", "annotations", f"instances_{split}.json"),
                    {"info": {}, "licenses": [], "images": images,
                     "annotations": annotations, "categories": categories})
        out[split] = ([im["file_name"] for im in images], labels)
    out["captions"] = write_coco_captions(root, captions)
    return out


def write_coco_captions(root: str, captions: Sequence[Tuple[int, str]] = COCO_CAPTIONS) -> str:
    """``COCO/annotations/captions_train2017.json`` with ``(image_id, caption)`` in file order."""
    path = os.path.join(root, "COCO", "annotations", "captions_train2017.json")
    images = sorted({image_id for image_id, _ in captions})
    _write_json(path, {"info": {}, "licenses": [],
                       "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in images],
                       "annotations": [{"image_id": i, "id": k + 1, "caption": text}
                                       for k, (i, text) in enumerate(captions)]})
    return path


def _write_json(path: str, data: object) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def write_fake_nuswide(root: str, n_test: int = 5, n_train: int = 3) -> Dict[str, Tuple]:
    """``NUSWIDE/{ImageList,TrainTestLabels,Flickr}`` in the official formats (backslash paths,
    CRLF line ends). Returns per split (``Test`` / ``Train``) ``(relative paths with '/',
    N x 81 labels)``."""
    base = os.path.join(root, "NUSWIDE")
    _write_text(os.path.join(base, "Concepts81.txt"), NUS.labels, newline="\r\n")
    out = {}
    for split, n, first in (("Test", n_test, 0), ("Train", n_train, 50)):
        folders = ["actor", "airport", "zebra"]
        paths = [f"{folders[i % 3]}/{first + i:04d}_{1000 + first + i}.jpg" for i in range(n)]
        labels = _pattern(n, len(NUS.labels), offset=first)
        for i, path in enumerate(paths):
            write_image(os.path.join(base, "Flickr", path), seed=first + i)
        _write_text(os.path.join(base, "ImageList", f"{split}Imagelist.txt"),
                    [p.replace("/", "\\") for p in paths], newline="\r\n")
        for c, concept in enumerate(NUS.labels):
            _write_text(os.path.join(base, "TrainTestLabels", f"Labels_{concept}_{split}.txt"),
                        [str(int(v > 0)) for v in labels[:, c]], newline="\r\n")
        out[split] = (paths, labels)
    return out


def write_fake_openimages(root: str, captions: Sequence[str] = OPENIMAGES_CAPTIONS) -> str:
    """``OpenImages/open_images_train_v6_captions.jsonl`` (localized narratives format)."""
    path = os.path.join(root, "OpenImages", "open_images_train_v6_captions.jsonl")
    _write_text(path, [json.dumps({"dataset_id": "open_images", "image_id": f"{i:016x}",
                                   "annotator_id": 7, "caption": text})
                       for i, text in enumerate(captions)])
    return path


def write_image_list(root: str, classnames: Sequence[str], n: int = 6,
                     synonyms: Optional[Sequence[Sequence[str]]] = None,
                     size: int = 16) -> Dict[str, object]:
    """``images/*.png``, ``classnames.txt`` (``name|synonym|...``), ``train.csv`` and
    ``test.csv`` (with a header) for :class:`MultiLabelImageList`. Returns the file names
    (relative to ``root``: ``classnames``, ``train``, ``test``) and per list
    ``(image paths, N x C labels)`` under ``train_items`` / ``test_items``."""
    entries = synonyms or [[name] for name in classnames]
    _write_text(os.path.join(root, "classnames.txt"), ["|".join(e) for e in entries])
    out: Dict[str, object] = {"classnames": "classnames.txt"}
    for split, offset in (("train", 0), ("test", 1)):
        labels = _pattern(n, len(classnames), offset=offset)
        paths: List[str] = []
        lines = ["image_path,labels"]
        for i in range(n):
            path = f"images/{split}_{i:04d}.png"
            write_image(os.path.join(root, path), size=size, seed=100 * offset + i)
            paths.append(path)
            positives = np.flatnonzero(labels[i] > 0)
            lines.append(path + "," + "|".join(classnames[c] for c in positives))
        _write_text(os.path.join(root, f"{split}.csv"), lines)
        out[split] = f"{split}.csv"
        out[f"{split}_items"] = (paths, labels)
    return out
