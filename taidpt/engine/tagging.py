"""Tag image files with a trained run's prompts (``taidpt tag``), streamed in batches.

Images go through the run's test transform (:func:`build_test_transform`) and the trainer's
``parse_batch_test`` / ``model_inference`` inside the model's ``cached_prompts()`` when it has
one, and each batch's heads through the trainer's evaluator (``merged`` as at evaluation): the
raw scores equal the ``scores_<head>`` an evaluation writes for the same image.

Scores written: with a calibration (the run's ``predictions_val.npz``), the *min-max score*
``(raw - lo) / (hi - lo)`` with the head's min and max over the val split
(:mod:`taidpt.engine.calibration`); without one, the raw head scores (only ``topk:K`` applies
then). Labels: ``calibrated`` (score >= the class's F1-maximising val threshold), ``FLOAT`` (score
>= FLOAT on the min-max scores) or ``topk:K`` (the K highest scores of each image).

Only one batch of images, scores and at most ``sheet_size`` thumbnails is held: rows go to the
CSV and JSON files as they are scored (temp files, moved into place at the end). Unreadable or
corrupt files are skipped with a warning and listed (log, JSON ``skipped``, the summary).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import uuid
from dataclasses import dataclass, field
from typing import IO, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from taidpt.engine.calibration import minmax
from taidpt.engine.data import build_test_transform, read_image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")


def find_images(inputs: Sequence[str]) -> List[str]:
    """The image files named by ``inputs``: files as given (any extension), directories searched
    recursively for :data:`IMAGE_EXTENSIONS` (sorted). A missing path is a FileNotFoundError
    naming it; no image at all is a ValueError."""
    paths: List[str] = []
    for entry in inputs:
        if os.path.isfile(entry):
            paths.append(entry)
        elif os.path.isdir(entry):
            for folder, subfolders, files in os.walk(entry):
                subfolders.sort()
                paths += [os.path.join(folder, name) for name in sorted(files)
                          if name.lower().endswith(IMAGE_EXTENSIONS)]
        else:
            raise FileNotFoundError(f"{entry} does not exist: give image files or folders of images.")
    if not paths:
        raise ValueError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) under {', '.join(inputs)}.")
    return paths


def read_class_file(path: str) -> List[str]:
    """Class names of a class file: one per line, ``name`` or ``name|synonym|...`` (first entry
    used); blank lines and ``#`` comments skipped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Class file {path} does not exist: write one class name per line.")
    with open(path, encoding="utf-8") as f:
        names = [line.split("|")[0].strip() for line in f
                 if line.strip() and not line.lstrip().startswith("#")]
    if not names:
        raise ValueError(f"Class file {path} lists no class: write one class name per line.")
    return names


class ImageFiles(Dataset):
    """``paths`` through ``transform``; items ``{"img": 3 x H x W or None, "index", "error"}``
    (``img`` None and ``error`` the reason when the file cannot be read)."""

    def __init__(self, paths: Sequence[str], transform) -> None:
        self.paths = paths
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        try:
            return {"img": self.transform(read_image(self.paths[index])), "index": index, "error": ""}
        except FileNotFoundError:
            return {"img": None, "index": index, "error": "file missing"}
        except RuntimeError as err:
            return {"img": None, "index": index, "error": f"corrupt or not an image ({err.__cause__})"}


def collate_images(batch: List[dict]) -> dict:
    """``{"img": B x 3 x H x W (None if no file of the batch was readable), "index": B,
    "failed": [(index, reason)]}``."""
    good = [item for item in batch if item["img"] is not None]
    return {"img": torch.stack([item["img"] for item in good]) if good else None,
            "index": torch.tensor([item["index"] for item in good], dtype=torch.long),
            "failed": [(item["index"], item["error"]) for item in batch if item["img"] is None]}


@dataclass
class Calibration:
    """What an evaluation stored for one head: ``lo`` / ``hi`` (min, max of its raw val scores) and
    ``thresholds`` (C, per-class F1-maximising thresholds on the min-max scores; inf: the class had
    no positive)."""

    path: str
    head: str
    classnames: List[str]
    lo: float
    hi: float
    thresholds: np.ndarray


def calibration_command(run_dir: str) -> str:
    """The command that writes ``run_dir/predictions_val.npz`` (an evaluation on the val split)."""
    return (f"taidpt train --config-file {os.path.join(run_dir, 'config.yaml')} --eval-only "
            f"--model-dir {run_dir} --output-dir {run_dir} TEST.SPLIT val")


def load_calibration(path: str, run_dir: str, head: str = "") -> Calibration:
    """Read ``head``'s calibration ("" = the file's headline) from a ``predictions_val.npz``;
    errors name the file and the command (:func:`calibration_command`) that writes it."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No calibration at {path}: evaluate the run on its val split "
                                f"first ({calibration_command(run_dir)}), or use --threshold topk:K.")
    with np.load(path) as data:
        head = head or str(data["headline"])
        if f"thresholds_{head}" not in data.files:
            raise ValueError(f"{path} holds no thresholds for head {head!r} (written before "
                             "calibrations were stored, or by a run without that head): "
                             f"re-evaluate with {calibration_command(run_dir)}")
        lo, hi = (float(v) for v in data[f"range_{head}"])
        return Calibration(path, head, [str(c) for c in data["classnames"]], lo, hi,
                           data[f"thresholds_{head}"].astype(np.float64))


@dataclass(frozen=True)
class ThresholdRule:
    """``calibrated``, ``value`` (score >= ``value``) or ``topk`` (``int(value)`` best classes)."""

    kind: str
    value: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "ThresholdRule":
        """``calibrated``, a float, or ``topk:K`` (K >= 1); else a ValueError naming the forms."""
        if text == "calibrated":
            return cls("calibrated")
        if text.startswith("topk:"):
            k = text[len("topk:"):]
            if k.isdigit() and int(k) >= 1:
                return cls("topk", int(k))
        else:
            with contextlib.suppress(ValueError):
                value = float(text)
                if math.isfinite(value):
                    return cls("value", value)
        raise ValueError(f"--threshold {text!r}: use 'calibrated', a number (e.g. 0.5, on the min-max "
                         "scores) or 'topk:K' (e.g. topk:3)")

    def predict(self, scores: np.ndarray, thresholds: Optional[np.ndarray] = None) -> np.ndarray:
        """Boolean ``B x C`` labels of ``B x C`` scores (``thresholds``: C, for ``calibrated``)."""
        if self.kind == "topk":
            k = min(int(self.value), scores.shape[1])
            top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            labels = np.zeros(scores.shape, dtype=bool)
            np.put_along_axis(labels, top, True, axis=1)
            return labels
        return scores >= (thresholds if self.kind == "calibrated" else self.value)

    def __str__(self) -> str:
        return {"calibrated": "calibrated", "topk": f"topk:{int(self.value)}"}.get(self.kind, f"{self.value:g}")


def _json_value(value):
    """inf / NaN (a class never predicted) as null, so the JSON stays standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class TagWriter:
    """Streams rows to ``csv_path`` (``path,labels,<class>...``; labels ``|``-joined) and
    ``json_path`` (``header`` keys, ``images``: ``{"path", "labels", "scores": {class: score}}``
    per image, ``skipped``: ``{"path", "error"}``, then the ``trailer`` keys), each through a temp file moved into place by
    :meth:`close` (removed by :meth:`abort`)."""

    def __init__(self, csv_path: str, json_path: str, classnames: Sequence[str], header: dict) -> None:
        self.classnames = list(classnames)
        self._targets = [csv_path, json_path]
        self._temps: List[str] = []
        self._files: List[IO[str]] = []
        for path in self._targets:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            temp = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
            self._temps.append(temp)
            self._files.append(open(temp, "x", encoding="utf-8", newline=""))
        self._csv, self._json = self._files
        self._csv.write(",".join(_csv_field(c) for c in ["path", "labels", *self.classnames]) + "\n")
        self._json.write("{\n" + "".join(f"{json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items())
                         + '"images": [')
        self.rows = 0

    def write(self, path: str, scores: np.ndarray, labels: Sequence[str]) -> None:
        """One image: ``scores`` (C, in class order), ``labels`` its predicted class names."""
        values = [float(s) for s in scores]
        self._csv.write(",".join([_csv_field(path), _csv_field("|".join(labels)),
                                  *(f"{v:.9g}" for v in values)]) + "\n")
        row = {"path": path, "labels": list(labels), "scores": dict(zip(self.classnames, values))}
        self._json.write(("," if self.rows else "") + "\n" + json.dumps(row))
        self.rows += 1

    def close(self, skipped: Sequence[Tuple[str, str]], trailer: dict) -> None:
        """Finish the JSON with ``skipped`` (path, reason) and ``trailer``; move both files into place."""
        tail = {"skipped": [{"path": p, "error": e} for p, e in skipped], **trailer}
        self._json.write("\n],\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in tail.items())
                         + "\n}\n")
        for file, temp, target in zip(self._files, self._temps, self._targets):
            file.close()
            os.replace(temp, target)

    def abort(self) -> None:
        """Close and delete the temp files (the targets are left as they were)."""
        for file, temp in zip(self._files, self._temps):
            file.close()
            with contextlib.suppress(FileNotFoundError):
                os.remove(temp)


def _csv_field(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if any(ch in text for ch in ',"\n\r') else text


@dataclass
class TagSummary:
    """What :func:`tag_images` did: ``images`` tagged, ``skipped`` (path, reason), per class the
    number of images labelled (``counts``), the files written and the head / score kind used."""

    images: int
    skipped: List[Tuple[str, str]]
    counts: Dict[str, int]
    outputs: List[str]
    head: str
    score: str


def score_batches(trainer, loader: DataLoader, head: str = "") -> Iterator[Tuple[List[int], np.ndarray, str, list]]:
    """Per batch of ``loader`` (:class:`ImageFiles` + :func:`collate_images`): ``(indices B,
    raw scores B x C of head, head name, failed [(index, reason)])``. ``head`` "" = the trainer's
    headline (TaI-DPT: merged)."""
    trainer.set_model_mode("eval")
    cache = getattr(trainer.model, "cached_prompts", None)
    evaluator = trainer.evaluator
    with torch.no_grad(), (cache() if cache is not None else contextlib.nullcontext()):
        for batch in tqdm(loader, desc="tagging", unit="batch", disable=None):
            if batch["img"] is None:
                yield [], np.zeros((0, trainer.num_classes)), head, batch["failed"]
                continue
            dummy = torch.zeros(batch["img"].shape[0], trainer.num_classes)
            inputs, _ = trainer.parse_batch_test({"img": batch["img"], "label": dummy, "index": batch["index"]})
            evaluator.reset()
            evaluator.process(trainer.model_inference(inputs), dummy)
            mats = evaluator.score_matrices()
            name = head or evaluator.headline_name(list(mats))
            if name not in mats:
                raise ValueError(f"Head {name!r} is not among {trainer.cfg.TRAINER.NAME}'s heads "
                               f"{list(mats)}: pick one with --head.")
            yield [int(i) for i in batch["index"]], mats[name], name, batch["failed"]
    evaluator.reset()


@dataclass
class SheetEntries:
    """The first ``limit`` tagged images for the contact sheet: (path, [(class, score, labelled)])."""

    limit: int
    entries: List[Tuple[str, List[Tuple[str, float, bool]]]] = field(default_factory=list)

    def add(self, path: str, classnames: Sequence[str], scores: np.ndarray, labels: np.ndarray,
            top: int = 3) -> None:
        if len(self.entries) < self.limit:
            order = np.argsort(-scores, kind="stable")[:top]
            self.entries.append((path, [(classnames[c], float(scores[c]), bool(labels[c])) for c in order]))


def _font(size: int):
    """PIL's default font at ``size`` px (Pillow >= 10.1), else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def write_contact_sheet(path: str, entries: Sequence[Tuple[str, List[Tuple[str, float, bool]]]],
                        thumb: int = 192, columns: int = 6) -> None:
    """A PNG grid: per image a ``thumb`` px thumbnail (scaled up or down, aspect kept), its file
    name and top classes with scores (labelled ones ``+`` in black, the others grey)."""
    from PIL import Image, ImageDraw, ImageOps

    font, line = _font(14), 17
    lines = 1 + max((len(top) for _, top in entries), default=0)
    cell_w, cell_h = thumb + 12, thumb + 18 + line * lines
    rows = max(1, math.ceil(len(entries) / columns))
    sheet = Image.new("RGB", (cell_w * min(columns, max(1, len(entries))), cell_h * rows), "white")
    draw = ImageDraw.Draw(sheet)
    for n, (image_path, top) in enumerate(entries):
        x, y = (n % columns) * cell_w + 6, (n // columns) * cell_h + 6
        image = ImageOps.contain(read_image(image_path), (thumb, thumb))
        sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
        name = os.path.basename(image_path)
        draw.text((x, y + thumb + 2), name if len(name) <= 24 else name[:10] + "..." + name[-11:],
                  fill=(0, 0, 160), font=font)
        for k, (cls, score, labelled) in enumerate(top, start=1):
            draw.text((x, y + thumb + 2 + k * line), f"{'+' if labelled else '-'} {cls} {score:.2f}",
                      fill=(0, 0, 0) if labelled else (150, 150, 150), font=font)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    sheet.save(path)


def tag_images(trainer, paths: Sequence[str], rule: ThresholdRule, csv_path: str, json_path: str,
               calibration: Optional[Calibration] = None, head: str = "",
               classes: Optional[Sequence[str]] = None, batch_size: int = 0, num_workers: int = -1,
               contact_sheet: str = "", sheet_size: int = 48, header: Optional[dict] = None) -> TagSummary:
    """Score ``paths`` with ``trainer`` (built and loaded) and write the CSV / JSON rows.

    ``calibration``: required by ``calibrated`` and number thresholds (min-max scores); its head
    is the one scored. ``classes``: output only these class names (the run's, in this order).
    ``batch_size`` / ``num_workers``: 0 / -1 = ``DATALOADER.TEST.BATCH_SIZE`` / ``NUM_WORKERS``.
    ``header``: extra keys for the JSON (e.g. the run).
    """
    run_classes = list(trainer.classnames)
    if rule.kind != "topk" and calibration is None:
        raise ValueError(f"--threshold {rule} needs the run's calibration (min-max scores); use topk:K "
                         "without one")
    if calibration is not None:
        if calibration.classnames != run_classes:
            raise ValueError(f"{calibration.path} was written for classes {calibration.classnames}, the "
                             f"run has {run_classes}: evaluate this run on its val split again")
        head = calibration.head
    columns = list(range(len(run_classes)))
    if classes is not None:
        unknown = [c for c in classes if c not in run_classes]
        if unknown:
            raise ValueError(f"Classes {unknown} are not classes of the run (it has: {', '.join(run_classes)})")
        columns = [run_classes.index(c) for c in classes]
    names = [run_classes[c] for c in columns]
    thresholds = calibration.thresholds[columns] if calibration is not None else None
    if rule.kind == "calibrated":
        never = [n for n, t in zip(names, thresholds) if not math.isfinite(t)]
        if never:
            logger.warning("Classes %s had no positive val image: never labelled with calibrated "
                           "thresholds", never)
    cfg = trainer.cfg
    loader = DataLoader(ImageFiles(paths, build_test_transform(cfg)),
                        batch_size=batch_size or cfg.DATALOADER.TEST.BATCH_SIZE, shuffle=False,
                        num_workers=cfg.DATALOADER.NUM_WORKERS if num_workers < 0 else num_workers,
                        collate_fn=collate_images)
    score_kind = "minmax_val" if calibration is not None else "raw"
    meta = {**(header or {}), "trainer": cfg.TRAINER.NAME, "score": score_kind,
            "score_range": [calibration.lo, calibration.hi] if calibration is not None else None,
            "threshold": str(rule), "classes": names,
            "thresholds": [_json_value(float(t)) for t in thresholds] if rule.kind == "calibrated" else None}
    writer = TagWriter(csv_path, json_path, names, meta)
    sheet = SheetEntries(sheet_size if contact_sheet else 0)
    skipped: List[Tuple[str, str]] = []
    counts = np.zeros(len(columns), dtype=np.int64)
    try:
        for indices, raw, scored_head, failed in score_batches(trainer, loader, head):
            for index, reason in failed:
                logger.warning("Skipping %s: %s", paths[index], reason)
                skipped.append((paths[index], reason))
            if not indices:
                continue
            head = scored_head
            scores = raw[:, columns].astype(np.float64)
            if calibration is not None:
                scores = minmax(scores, calibration.lo, calibration.hi)
            labels = rule.predict(scores, thresholds)
            counts += labels.sum(axis=0)
            for index, row, mask in zip(indices, scores, labels):
                writer.write(paths[index], row, [n for n, on in zip(names, mask) if on])
                sheet.add(paths[index], names, row, mask)
    except BaseException:
        writer.abort()
        raise
    writer.close(skipped, {"head": head})
    outputs = [csv_path, json_path]
    if contact_sheet:
        write_contact_sheet(contact_sheet, sheet.entries)
        outputs.append(contact_sheet)
    return TagSummary(writer.rows, skipped, dict(zip(names, (int(c) for c in counts))), outputs, head,
                      score_kind)
