"""Captions as training data: labelled, tokenised sentences (SPEC 5).

``CaptionCorpus`` labels sentences with :class:`~taidpt.datasets.labelling.Labeller`, drops the
ones that mention no class, optionally applies the NUS-WIDE "limit" sampler and a random subset,
appends the template sentences and tokenises everything with CLIP's BPE.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from taidpt.clip import tokenize
from taidpt.datasets.labelling import Labeller

logger = logging.getLogger(__name__)

# The 80 ImageNet prompt templates published with CLIP.
IMAGENET_TEMPLATES = (
    "a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}.",
    "a photo of the hard to see {}.", "a low resolution photo of the {}.", "a rendering of a {}.",
    "graffiti of a {}.", "a bad photo of the {}.", "a cropped photo of the {}.",
    "a tattoo of a {}.", "the embroidered {}.", "a photo of a hard to see {}.",
    "a bright photo of a {}.", "a photo of a clean {}.", "a photo of a dirty {}.",
    "a dark photo of the {}.", "a drawing of a {}.", "a photo of my {}.", "the plastic {}.",
    "a photo of the cool {}.", "a close-up photo of a {}.", "a black and white photo of the {}.",
    "a painting of the {}.", "a painting of a {}.", "a pixelated photo of the {}.",
    "a sculpture of the {}.", "a bright photo of the {}.", "a cropped photo of a {}.",
    "a plastic {}.", "a photo of the dirty {}.", "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.", "a photo of the {}.", "a good photo of the {}.",
    "a rendering of the {}.", "a {} in a video game.", "a photo of one {}.", "a doodle of a {}.",
    "a close-up photo of the {}.", "a photo of a {}.", "the origami {}.",
    "the {} in a video game.", "a sketch of a {}.", "a doodle of the {}.", "a origami {}.",
    "a low resolution photo of a {}.", "the toy {}.", "a rendition of the {}.",
    "a photo of the clean {}.", "a photo of a large {}.", "a rendition of a {}.",
    "a photo of a nice {}.", "a photo of a weird {}.", "a blurry photo of a {}.",
    "a cartoon {}.", "art of a {}.", "a sketch of the {}.", "a embroidered {}.",
    "a pixelated photo of a {}.", "itap of the {}.", "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.", "a plushie {}.", "a photo of the nice {}.",
    "a photo of the small {}.", "a photo of the weird {}.", "the cartoon {}.", "art of the {}.",
    "a drawing of the {}.", "a photo of the large {}.", "a black and white photo of a {}.",
    "the plushie {}.", "a dark photo of a {}.", "itap of a {}.", "graffiti of the {}.",
    "a toy {}.", "itap of my {}.", "a photo of a cool {}.", "a photo of a small {}.",
    "a tattoo of the {}.",
)
# The reference adds 9 more copies of the plainest template: 89 sentences per class.
TEMPLATES = IMAGENET_TEMPLATES + ("a photo of a {}.",) * 9


def template_sentences(classnames: Sequence[str]) -> List[str]:
    """``len(TEMPLATES)`` sentences per class, class-major."""
    return [t.format(name) for name in classnames for t in TEMPLATES]


def limit_sampler(labels: np.ndarray, limit: int) -> np.ndarray:
    """NUS-WIDE "limit" sampler: indices of the kept captions, in corpus order.

    ``labels`` is ``N x C`` multi-hot, every row with a positive. Each caption goes to its rarest
    positive class (classes ranked by caption count, ties by index); the first ``limit`` captions
    of each class are kept.
    """
    rarest_first = np.argsort(labels.sum(axis=0), kind="stable")
    owner = rarest_first[(labels[:, rarest_first] > 0).argmax(axis=1)]
    kept = np.zeros(len(labels), dtype=bool)
    for c in np.unique(owner):
        kept[np.flatnonzero(owner == c)[:limit]] = True
    return np.flatnonzero(kept)


def tokenize_all(sentences: Sequence[str], context_length: int, progress: bool = False,
                 chunk: int = 4096) -> torch.Tensor:
    """CLIP tokens of every sentence, ``N x context_length`` long (truncated, EOS kept)."""
    if not sentences:
        return torch.zeros(0, context_length, dtype=torch.long)
    parts = [tokenize(list(sentences[i:i + chunk]), context_length).long()
             for i in tqdm(range(0, len(sentences), chunk), desc="tokenize", unit="chunk",
                           disable=not progress)]
    return torch.cat(parts)


class CaptionCorpus(Dataset):
    """Sentences labelled with a class list; items ``{"tokens": L long, "label": C float}``.

    Attributes: ``tokens`` (N x L long), ``labels`` (N x C float, multi-hot 1/0), ``sentences``
    (N str), ``classnames`` (C str, the first synonyms) and ``stats`` (counts, see DATA.md).

    Steps: label (dropping sentences without a class) -> ``limit_per_class`` > 0: the
    :func:`limit_sampler` -> ``max_captions`` > 0: a random subset (``seed``), in corpus order ->
    ``templates``: 89 one-hot sentences per class, named by the first synonym -> tokenise to
    ``context_length`` tokens.
    """

    def __init__(self, sentences: Sequence[str], synonyms: Sequence[Sequence[str]],
                 context_length: int = 77, *, templates: bool = True, max_captions: int = -1,
                 limit_per_class: int = -1, seed: int = 0, progress: bool = False) -> None:
        classnames = [entries[0] for entries in synonyms]
        hits = Labeller(synonyms).label_all(tqdm(sentences, desc="label", unit="caption",
                                                 disable=not progress))
        keep = [i for i, h in enumerate(hits) if h]
        labels = np.zeros((len(keep), len(classnames)), dtype=np.uint8)
        for row, i in enumerate(keep):
            labels[row, hits[i]] = 1
        stats: Dict[str, object] = {"read": len(sentences), "labelled": len(keep),
                                    "dropped": len(sentences) - len(keep)}
        if limit_per_class > 0:
            index = limit_sampler(labels, limit_per_class)
            keep, labels = [keep[i] for i in index], labels[index]
            stats["after_limit"] = len(keep)
        if 0 < max_captions < len(keep):
            index = np.sort(np.random.RandomState(seed).choice(len(keep), max_captions,
                                                               replace=False))
            keep, labels = [keep[i] for i in index], labels[index]
            stats["after_subsample"] = len(keep)
        texts = [sentences[i] for i in keep]
        stats["captions"] = len(texts)
        stats["per_class"] = dict(zip(classnames, labels.sum(axis=0, dtype=np.int64).tolist()))
        if templates:
            texts += template_sentences(classnames)
            labels = np.concatenate([labels, np.repeat(np.eye(len(classnames), dtype=np.uint8),
                                                       len(TEMPLATES), axis=0)])
        stats["templates"] = len(texts) - stats["captions"]
        stats["total"] = len(texts)
        self._set(tokenize_all(texts, context_length, progress),
                  torch.from_numpy(labels.astype(np.float32)), texts, classnames, stats)

    @classmethod
    def from_tensors(cls, tokens: torch.Tensor, labels: torch.Tensor, sentences: Sequence[str],
                     classnames: Sequence[str], stats: Optional[dict] = None) -> "CaptionCorpus":
        """A corpus from already labelled and tokenised data (the prepared cache)."""
        corpus = cls.__new__(cls)
        corpus._set(tokens.long(), labels.float(), list(sentences), list(classnames), stats or {})
        return corpus

    def _set(self, tokens: torch.Tensor, labels: torch.Tensor, sentences: List[str],
             classnames: List[str], stats: dict) -> None:
        if not (len(tokens) == len(labels) == len(sentences)):
            raise ValueError(f"CaptionCorpus: {len(tokens)} token rows, {len(labels)} label rows "
                             f"and {len(sentences)} sentences must match")
        self.tokens, self.labels, self.sentences = tokens, labels, sentences
        self.classnames, self.stats = classnames, stats

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def context_length(self) -> int:
        return self.tokens.shape[1]

    def __len__(self) -> int:
        return len(self.sentences)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return {"tokens": self.tokens[index], "label": self.labels[index]}
