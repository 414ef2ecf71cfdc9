"""CaptionCorpus: labels, templates, subsampling, the NUS-WIDE limit sampler, token shapes."""
import numpy as np
import pytest
import torch

from taidpt.datasets.caption_corpus import (IMAGENET_TEMPLATES, TEMPLATES, CaptionCorpus,
                                            limit_sampler, template_sentences)

SOT, EOT = 49406, 49407
FRUIT = [["apple", "apples"], ["banana"], ["cherry"]]
# Crafted for the limit sampler: counts apple 5, banana 3, cherry 3 -> visiting order banana,
# cherry, apple; rows 1 and 6 go to banana, row 3 to cherry.
FRUIT_SENTENCES = [
    "An apple.", "An apple and a banana.", "A banana.", "An apple and a cherry.", "A cherry.",
    "An apple pie.", "A banana with a cherry.", "Apples!",
]
FRUIT_LABELS = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0],
                         [0, 1, 1], [1, 0, 0]], dtype=np.uint8)


def test_templates_are_clip_imagenet_plus_nine():
    assert len(IMAGENET_TEMPLATES) == len(set(IMAGENET_TEMPLATES)) == 80
    assert len(TEMPLATES) == 89 and TEMPLATES[80:] == ("a photo of a {}.",) * 9
    assert template_sentences(["dog", "cat"])[88:90] == ["a photo of a dog.",
                                                         "a bad photo of a cat."]


@pytest.mark.parametrize("context_length", [77, 16])
def test_template_only_corpus(context_length):
    corpus = CaptionCorpus([], FRUIT, context_length)
    assert len(corpus) == 3 * 89
    assert corpus.tokens.shape == (3 * 89, context_length) and corpus.tokens.dtype == torch.long
    assert corpus.labels.shape == (3 * 89, 3) and corpus.labels.dtype == torch.float32
    assert corpus.labels.sum(dim=1).eq(1).all()
    assert corpus.labels.sum(dim=0).tolist() == [89.0, 89.0, 89.0]
    assert corpus.sentences[89] == "a bad photo of a banana."
    assert corpus.labels[89].tolist() == [0, 1, 0]
    assert corpus.stats["templates"] == 267 and corpus.stats["captions"] == 0


def test_labels_drop_and_items():
    corpus = CaptionCorpus(FRUIT_SENTENCES + ["A plain wall."], FRUIT, templates=False)
    assert corpus.sentences == FRUIT_SENTENCES
    np.testing.assert_array_equal(corpus.labels.numpy(), FRUIT_LABELS)
    assert (corpus.stats["read"], corpus.stats["labelled"], corpus.stats["dropped"]) == (9, 8, 1)
    assert corpus.stats["per_class"] == {"apple": 5, "banana": 3, "cherry": 3}
    item = corpus[1]
    assert set(item) == {"tokens", "label"}
    assert item["label"].tolist() == [1.0, 1.0, 0.0]
    tokens = item["tokens"].tolist()
    assert tokens[0] == SOT and item["tokens"].argmax() == tokens.index(EOT)


def test_long_sentences_are_truncated_with_eos():
    corpus = CaptionCorpus(["a banana " * 60], FRUIT, context_length=77, templates=False)
    assert corpus.tokens.shape == (1, 77) and corpus.tokens[0, -1] == EOT


@pytest.mark.parametrize("limit,kept", [(1, [0, 1, 3]), (2, [0, 1, 2, 3, 4, 5]),
                                        (3, [0, 1, 2, 3, 4, 5, 6, 7]), (100, list(range(8)))])
def test_limit_sampler(limit, kept):
    assert limit_sampler(FRUIT_LABELS, limit).tolist() == kept


def test_limit_sampler_breaks_count_ties_by_class_index():
    labels = np.array([[1, 1], [1, 1], [1, 0], [0, 1]], dtype=np.uint8)  # counts 3, 3
    assert limit_sampler(labels, 1).tolist() == [0, 3]


def test_corpus_limit_per_class():
    corpus = CaptionCorpus(FRUIT_SENTENCES, FRUIT, templates=False, limit_per_class=1)
    assert corpus.sentences == [FRUIT_SENTENCES[i] for i in (0, 1, 3)]
    assert corpus.stats["after_limit"] == 3


def test_random_subset_is_seeded_and_in_corpus_order():
    subsets = [CaptionCorpus(FRUIT_SENTENCES, FRUIT, templates=False, max_captions=4,
                             seed=seed).sentences for seed in (0, 0, 3)]
    assert subsets[0] == subsets[1] and subsets[0] != subsets[2]
    for subset in subsets:
        assert len(subset) == 4
        assert [FRUIT_SENTENCES.index(s) for s in subset] == sorted(FRUIT_SENTENCES.index(s)
                                                                    for s in subset)


def test_subset_larger_than_corpus_keeps_all_and_templates_are_appended():
    corpus = CaptionCorpus(FRUIT_SENTENCES, FRUIT, max_captions=100)
    assert len(corpus) == 8 + 3 * 89 and "after_subsample" not in corpus.stats
    assert corpus.sentences[8] == "a bad photo of a apple."


def test_from_tensors_checks_lengths():
    corpus = CaptionCorpus.from_tensors(torch.zeros(2, 5, dtype=torch.int32),
                                        torch.ones(2, 3, dtype=torch.uint8), ["a", "b"], ["x"] * 3)
    assert corpus.tokens.dtype == torch.long and corpus.labels.dtype == torch.float32
    assert corpus.context_length == 5 and corpus.num_classes == 3
    with pytest.raises(ValueError, match="2 token rows, 1 label rows and 2 sentences"):
        CaptionCorpus.from_tensors(torch.zeros(2, 5), torch.ones(1, 3), ["a", "b"], ["x"] * 3)


def test_dataloader_batches():
    corpus = CaptionCorpus(FRUIT_SENTENCES, FRUIT)
    batch = next(iter(torch.utils.data.DataLoader(corpus, batch_size=4)))
    assert batch["tokens"].shape == (4, 77) and batch["label"].shape == (4, 3)
