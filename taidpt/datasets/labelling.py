"""Caption labelling (SPEC 5): which classes does a sentence mention?

A sentence is lowercased, tokenized, lemmatised (nouns to singular) and padded with spaces; then
1) multi-word synonyms are matched as ``' phrase '`` and deleted from the sentence (so "hot dog"
does not also mark "dog"), 2) single words and the space-stripped form of compounds ("hotdog",
"motorbike") are matched against the remaining tokens.

Lemmatisation is offline: ``lemminflect`` ships its dictionary, so nothing is downloaded (the
reference uses nltk's POS tagger + WordNet, which need downloaded data). Without a POS tagger a
word is read as a noun when it can be one, as a verb otherwise; "-ing" forms with a verb reading
are read as verbs ("sitting" -> "sit", "skiing" -> "ski"), as the tagger does in most captions.
Synonyms go through the same lemmatiser, so both sides of a match always agree. DATA.md lists
where this differs from WordNet lemmatisation.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Dict, Iterable, List, Sequence, Tuple

import numpy as np
from lemminflect import getAllLemmas, getAllLemmasOOV

# Words and punctuation; hyphens separate words ("hot-dog" reads as "hot dog").
_TOKEN_RE = re.compile(r"[^\W_]+|[^\w\s-]")
# Parts of speech tried in order when a word is in lemminflect's dictionary.
_POS_ORDER = ("NOUN", "VERB", "AUX", "ADJ", "ADV", "PROPN")
# Nouns with several dictionary lemmas whose first one is not WordNet's.
_NOUN_OVERRIDES = {"leaves": "leaf"}


def tokenize_words(sentence: str) -> List[str]:
    """Lowercase and split into word and punctuation tokens."""
    return _TOKEN_RE.findall(sentence.lower())


@lru_cache(maxsize=None)
def lemmatize_word(word: str) -> str:
    """Dictionary form of one lowercase token (nouns to singular, verbs to the base form)."""
    if word in _NOUN_OVERRIDES:
        return _NOUN_OVERRIDES[word]
    lemmas = getAllLemmas(word)
    if not lemmas:
        return getAllLemmasOOV(word, "NOUN")["NOUN"][0] if word.isalpha() else word
    if word.endswith("ing") and "VERB" in lemmas:
        return lemmas["VERB"][0]
    for pos in _POS_ORDER:
        if pos in lemmas:
            return lemmas[pos][0]
    return next(iter(lemmas.values()))[0]


def lemmatize(sentence: str) -> List[str]:
    """Lowercased, tokenized, lemmatised tokens of a sentence."""
    return [lemmatize_word(token) for token in tokenize_words(sentence)]


def normalize(sentence: str) -> str:
    """The padded lemma string the matcher works on: ``' a man ride a motorbike . '``."""
    return " " + " ".join(lemmatize(sentence)) + " "


class Labeller:
    """Multi-hot labels from synonym lists, compiled once per class list.

    ``synonyms[c]`` lists the words and phrases of class ``c`` (in any inflection: they are
    lemmatised like the captions).
    """

    def __init__(self, synonyms: Sequence[Sequence[str]]) -> None:
        self.num_classes = len(synonyms)
        phrases: Dict[str, set] = {}
        words: Dict[str, set] = {}
        for c, entries in enumerate(synonyms):
            for entry in entries:
                lemmas = lemmatize(entry)
                if not lemmas:
                    continue
                if len(lemmas) > 1:
                    phrases.setdefault(" " + " ".join(lemmas) + " ", set()).add(c)
                    words.setdefault(lemmatize_word("".join(tokenize_words(entry))), set()).add(c)
                    words.setdefault("".join(lemmas), set()).add(c)
                else:
                    words.setdefault(lemmas[0], set()).add(c)
        # Longest phrases first, so "hot dog bun" would win over "hot dog".
        order = sorted(phrases, key=lambda p: (-p.count(" "), -len(p), p))
        self._phrases: List[Tuple[str, Tuple[int, ...]]] = [
            (p, tuple(sorted(phrases[p]))) for p in order]
        self._words: Dict[str, Tuple[int, ...]] = {w: tuple(sorted(cs)) for w, cs in words.items()}
        self._vocabulary = frozenset(self._words)

    def match(self, padded: str) -> List[int]:
        """Sorted class indices found in a padded lemma string (see :func:`normalize`)."""
        hits = set()
        for phrase, classes in self._phrases:
            if phrase in padded:
                hits.update(classes)
                while phrase in padded:
                    padded = padded.replace(phrase, " ")
        for word in self._vocabulary.intersection(padded.split()):
            hits.update(self._words[word])
        return sorted(hits)

    def classes_of(self, sentence: str) -> List[int]:
        """Sorted indices of the classes a raw sentence mentions."""
        return self.match(normalize(sentence))

    def label(self, sentence: str) -> np.ndarray:
        """Multi-hot float32 label of length C (1 = mentioned)."""
        out = np.zeros(self.num_classes, dtype=np.float32)
        out[self.classes_of(sentence)] = 1.0
        return out

    def label_all(self, sentences: Iterable[str]) -> List[List[int]]:
        """Class indices of every sentence (an empty list when it mentions no class)."""
        return [self.match(normalize(s)) for s in sentences]
