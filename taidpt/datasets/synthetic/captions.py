"""Captions of synthetic scenes in varied English, like real captions: often partial.

A caption names some or all of the scene's classes (by a synonym, with counts, colours, sizes and
positions), inside one of several sentence structures, with words that name no class; about a
third of the structures name the scene's style ("a photo of ...", "a pencil sketch with ...").
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np

from taidpt.datasets.synthetic.scenes import Scene, SceneObject, Vocabulary

MENTION_ALL_PROB = 0.65  # otherwise a random proper subset of the classes is mentioned
MAX_WORDS = 20  # keeps every caption within CLIP's 32-token context of the tiny model
NUMBERS = {2: "two", 3: "three", 4: "four"}
PATTERN_WORDS = {"plain": "plain", "gradient": "faded", "striped": "striped", "dotted": "dotted"}
TEMPLATES = (
    "a {style} of {0}.", "a picture of {0}.", "a {adj} {style} of {0}.",
    "an image with {0} on a {bg} background.", "there {be} {0}.", "there {be} {0} in this image.", "{0}.",
    "{0} on a {bg} background.", "i can see {0}.", "this {style} shows {0}.", "a {adj} {view} of {0} on {bg}.",
    "{0} and some lines.", "close-up of {0}.", "{0} in a {adj} scene.", "a {style} with {0}.",
)
ADJECTIVES = ("simple", "colorful", "cute", "quick", "nice", "small", "old")
VIEWS = ("picture", "image", "scene")
STYLE_WORDS = {"photo": ("photo", "photograph", "snapshot"),
               "drawing": ("drawing", "cartoon", "illustration"),
               "sketch": ("sketch", "pencil sketch", "black and white drawing")}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _position(obj: SceneObject) -> str:
    col = "left" if obj.x < 0.35 else "right" if obj.x > 0.65 else ""
    row = "top" if obj.y < 0.35 else "bottom" if obj.y > 0.65 else ""
    if row and col:
        return f"in the {row} {col} corner"
    if row or col:
        return f"at the {row}" if row else f"on the {col}"
    return "in the middle"


def _noun_phrase(objects: Sequence[SceneObject], vocab: Vocabulary, rng: np.random.Generator,
                 detail: int, colour: bool = True) -> str:
    """E.g. 'a small red apple on the left' (detail 2), 'two red balls' (1), 'a pair of hearts' (0);
    ``colour=False`` (grey sketches) never names a colour."""
    cls = vocab.classes[objects[0].label]
    k = 0 if len(cls.synonyms) == 1 or rng.random() < 0.7 else int(rng.integers(1, len(cls.synonyms)))
    words: List[str] = []
    colours = {obj.colour for obj in objects}
    if detail and len(colours) == 1 and rng.random() < 0.5 and colour:
        words.append(colours.pop())
    if len(objects) == 1:
        size = objects[0].size
        if detail and rng.random() < 0.25 and not 0.16 <= size <= 0.22:
            words.insert(0, str(rng.choice(["small", "tiny"] if size < 0.16 else ["big", "large"])))
        phrase = " ".join([_article((words or [cls.synonyms[k]])[0]), *words, cls.synonyms[k]])
        return f"{phrase} {_position(objects[0])}" if detail == 2 else phrase
    count = str(rng.choice([NUMBERS[len(objects)], "some", "several"] + ["a pair of"] * (len(objects) == 2)))
    return " ".join([count, *words, cls.plurals[k]])


def _join(phrases: Sequence[str], rng: np.random.Generator) -> str:
    if len(phrases) == 1:
        return phrases[0]
    if len(phrases) == 2 and rng.random() < 0.4:
        return f"{phrases[0]} {rng.choice(['next to', 'near', 'with', 'beside'])} {phrases[1]}"
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def write_caption(scene: Scene, vocab: Vocabulary, rng: np.random.Generator) -> str:
    """One lower-case caption of ``scene`` (random structure, synonyms and details)."""
    groups: Dict[int, List[SceneObject]] = {}
    for obj in scene.objects:
        groups.setdefault(obj.label, []).append(obj)
    labels = list(groups)
    rng.shuffle(labels)
    if len(labels) > 1 and rng.random() > MENTION_ALL_PROB:
        labels = labels[: rng.integers(1, len(labels))]
    located = int(rng.integers(len(labels))) if rng.random() < 0.3 else -1
    template = str(rng.choice(TEMPLATES))
    background = "plain" if scene.style == "sketch" else scene.background  # sketches are grey
    if scene.style == "photo" and rng.random() < 0.5:  # only photos have background patterns
        background = f"{PATTERN_WORDS[scene.pattern]} {scene.background}"
    fills = {"adj": rng.choice(ADJECTIVES), "view": rng.choice(VIEWS), "bg": background,
             "style": rng.choice(STYLE_WORDS[scene.style])}
    for detail in (2, 1, 0):  # a caption over MAX_WORDS is written again with fewer details
        phrases = [_noun_phrase(groups[label], vocab, rng, min(detail, 1 + (i == located)),
                                colour=scene.style != "sketch") for i, label in enumerate(labels)]
        fills["be"] = "is" if phrases[0].startswith(("a ", "an ")) else "are"
        caption = template.format(_join(phrases, rng), **fills)
        if len(caption.split()) <= MAX_WORDS:
            break
    return caption
