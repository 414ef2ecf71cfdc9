"""Caption labelling (SPEC 5): lemmatiser, matching rules and a table of COCO-style captions."""
import random
import time

import numpy as np
import pytest

from taidpt.datasets._common import load_label_set
from taidpt.datasets.labelling import Labeller, lemmatize, lemmatize_word, normalize

COCO = load_label_set("coco2014")
VOC = load_label_set("voc2007")
COCO_LABELLER = Labeller(COCO.synonyms)
VOC_LABELLER = Labeller(VOC.synonyms)

# (caption, hand-written WordNet-style lemmas: each word's dictionary form for its part of speech
#  in context, as nltk's tagger + WordNet lemmatiser aim to give, and the expected COCO labels).
TABLE = [
    ("A man riding a motor bike down a dirt road.",
     "a man ride a motor bike down a dirt road .", {"person", "motorcycle"}),
    ("Two hotdogs with mustard sitting on a paper plate.",
     "two hotdog with mustard sit on a paper plate .", {"hot dog"}),
    ("A hot dog in a bun next to a bowl of chips.",
     "a hot dog in a bun next to a bowl of chip .", {"hot dog", "bowl"}),
    ("A dog sleeping on a red carpet.", "a dog sleep on a red carpet .", {"dog"}),
    ("The carpet in the living room is clean.",
     "the carpet in the living room be clean .", set()),
    ("Several cars parked along a busy city street.",
     "several car park along a busy city street .", {"car"}),
    ("A woman holding an umbrella in the rain.",
     "a woman hold an umbrella in the rain .", {"person", "umbrella"}),
    ("Three giraffes standing near a tall tree.",
     "three giraffe stand near a tall tree .", {"giraffe"}),
    ("A teddy bear sitting on top of a bed.",
     "a teddy bear sit on top of a bed .", {"teddy bear", "bed"}),
    ("A brown bear walking through the grass.",
     "a brown bear walk through the grass .", {"bear"}),
    ("A kitchen with a microwave oven and a refrigerator.",
     "a kitchen with a microwave oven and a refrigerator .", {"microwave", "refrigerator"}),
    ("A pizza sitting on top of an oven rack.",
     "a pizza sit on top of an oven rack .", {"pizza", "oven"}),
    ("People are skiing down a snowy mountain.",
     "people be ski down a snowy mountain .", {"person", "skis"}),
    ("A snowboarder jumps off a ramp.", "a snowboarder jump off a ramp .", {"person"}),
    ("A young boy is skateboarding at a skate park.",
     "a young boy be skateboard at a skate park .", {"person", "skateboard"}),
    ("A surfer rides a wave on his surfboard.",
     "a surfer ride a wave on his surfboard .", {"person", "surfboard"}),
    ("A batter swings a baseball bat at the ball.",
     "a batter swing a baseball bat at the ball .", {"person", "baseball bat", "sports ball"}),
    ("A catcher wearing a baseball glove crouches behind home plate.",
     "a catcher wear a baseball glove crouch behind home plate .",
     {"person", "baseball glove"}),
    ("Two men playing frisbee in a park.", "two man play frisbee in a park .",
     {"person", "frisbee"}),
    ("A tennis player swinging a racket at a tennis ball.",
     "a tennis player swing a racket at a tennis ball .",
     {"person", "tennis racket", "sports ball"}),
    ("A bunch of bananas and oranges in a bowl.",
     "a bunch of banana and orange in a bowl .", {"banana", "orange", "bowl"}),
    ("A plate of broccoli and carrots next to a fork and knife.",
     "a plate of broccoli and carrot next to a fork and knife .",
     {"broccoli", "carrot", "fork", "knife"}),
    ("Knives and spoons are laid out on the table.",
     "knife and spoon be lay out on the table .", {"knife", "spoon", "dining table"}),
    ("A glass of wine next to a cup of coffee.",
     "a glass of wine next to a cup of coffee .", {"wine glass", "cup"}),
    ("Donuts and cupcakes on display in a bakery.",
     "donut and cupcake on display in a bakery .", {"donut", "cake"}),
    ("A cat laying on a couch next to a remote control.",
     "a cat lay on a couch next to a remote control .", {"cat", "couch", "remote"}),
    ("A laptop and a keyboard on a desk with a computer mouse.",
     "a laptop and a keyboard on a desk with a computer mouse .",
     {"laptop", "keyboard", "mouse"}),
    ("A woman talking on her cell phone.", "a woman talk on her cell phone .",
     {"person", "cell phone"}),
    ("A toilet bowl next to a bathroom sink.", "a toilet bowl next to a bathroom sink .",
     {"toilet", "sink"}),
    ("A clock tower in the middle of a town.", "a clock tower in the middle of a town .",
     {"clock"}),
    ("Flowers in a vase on a wooden table.", "flower in a vase on a wooden table .",
     {"vase", "dining table"}),
    ("A pair of scissors next to a toothbrush.", "a pair of scissors next to a toothbrush .",
     {"scissors", "toothbrush"}),
    ("A woman using a hair dryer in the bathroom.",
     "a woman use a hair dryer in the bathroom .", {"person", "hair drier"}),
    ("A stop sign on the corner of a street.", "a stop sign on the corner of a street .",
     {"stop sign"}),
    ("A red fire hydrant on a sidewalk.", "a red fire hydrant on a sidewalk .",
     {"fire hydrant"}),
    ("A traffic light hanging over an intersection.",
     "a traffic light hang over an intersection .", {"traffic light"}),
    ("A parking meter on the side of the road.",
     "a parking meter on the side of the road .", {"parking meter"}),
    ("Sheep grazing in a field with cows.", "sheep graze in a field with cow .",
     {"sheep", "cow"}),
    ("An elephant and a zebra at the zoo.", "an elephant and a zebra at the zoo .",
     {"elephant", "zebra"}),
    ("A flock of birds flying over the ocean.", "a flock of bird fly over the ocean .",
     {"bird"}),
    ("A large airplane on a runway at the airport.",
     "a large airplane on a runway at the airport .", {"airplane"}),
    ("A double decker bus driving down the street.",
     "a double decker bus drive down the street .", {"bus"}),
    ("A train traveling down the tracks.", "a train travel down the track .", {"train"}),
    ("A pickup truck parked next to a boat.", "a pickup truck park next to a boat .",
     {"truck", "boat"}),
    ("A man with a backpack and a suitcase at the station.",
     "a man with a backpack and a suitcase at the station .",
     {"person", "backpack", "suitcase"}),
    ("A woman carrying a purse and wearing a tie.",
     "a woman carry a purse and wear a tie .", {"person", "handbag", "tie"}),
    ("A bicycle leaning against a bench.", "a bicycle lean against a bench .",
     {"bicycle", "bench"}),
    ("A kite flying high in the sky.", "a kite fly high in the sky .", {"kite"}),
    ("A sandwich and an apple on a plate.", "a sandwich and an apple on a plate .",
     {"sandwich", "apple"}),
    ("A birthday cake with candles.", "a birthday cake with candle .", {"cake"}),
    ("A potted plant next to a chair.", "a potted plant next to a chair .",
     {"potted plant", "chair"}),
    ("A book sitting on a shelf.", "a book sit on a shelf .", {"book"}),
    ("A television on a stand in a living room.",
     "a television on a stand in a living room .", {"tv"}),
    ("A dining table with chairs around it.", "a dining table with chair around it .",
     {"dining table", "chair"}),
    ("A toaster next to a blender on the counter.",
     "a toaster next to a blender on the counter .", {"toaster"}),
    ("A car driving past a carpet store.", "a car drive past a carpet store .", {"car"}),
    ("A cart full of groceries.", "a cart full of grocery .", set()),
    ("A man wearing glasses reads a newspaper.", "a man wear glass read a newspaper .",
     {"person"}),
    ("Two kids playing with a ball in the yard.", "two kid play with a ball in the yard .",
     {"person", "sports ball"}),
    ("A horse pulling a carriage.", "a horse pull a carriage .", {"horse"}),
]
# Measured agreement of our lemmas with the hand-written WordNet-style ones (reported in DATA.md).
AGREEING_TOKENS, TOTAL_TOKENS = 547, 552


def coco_names(indices):
    return {COCO.labels[i] for i in indices}


def test_table_size():
    assert len(TABLE) >= 40
    assert all(len(lemmatize(s)) == len(w.split()) for s, w, _ in TABLE)


@pytest.mark.parametrize("sentence,wordnet,labels", TABLE, ids=[row[0][:30] for row in TABLE])
def test_coco_labels(sentence, wordnet, labels):
    assert coco_names(COCO_LABELLER.classes_of(sentence)) == labels


def test_agreement_with_wordnet_style_lemmas():
    pairs = [(ours, theirs) for sentence, wordnet, _ in TABLE
             for ours, theirs in zip(lemmatize(sentence), wordnet.split())]
    differing = sorted({pair for pair in pairs if pair[0] != pair[1]})
    assert sum(a == b for a, b in pairs) == AGREEING_TOKENS
    assert len(pairs) == TOTAL_TOKENS
    # Every difference is a noun-like "-ing"/"-ed" form read as a verb. Synonyms are lemmatised
    # the same way ("parking meter" -> "park meter"), so the labels above are unaffected.
    assert differing == [("dine", "dining"), ("live", "living"), ("park", "parking"),
                         ("pot", "potted")]


@pytest.mark.parametrize("word,lemma", [
    ("dogs", "dog"), ("buses", "bus"), ("bus", "bus"), ("men", "man"), ("women", "woman"),
    ("children", "child"), ("people", "people"), ("mice", "mouse"), ("knives", "knife"),
    ("leaves", "leaf"), ("skis", "ski"), ("skiing", "ski"), ("is", "be"), ("sitting", "sit"),
    ("glasses", "glass"), ("scissors", "scissors"), ("tennis", "tennis"), ("hotdogs", "hotdog"),
    ("frisbees", "frisbee"), ("tvs", "tv"), ("sheep", "sheep"), ("the", "the"), ("12", "12"),
])
def test_lemmatize_word(word, lemma):
    assert lemmatize_word(word) == lemma


def test_normalize_pads_lowercases_and_splits_hyphens():
    assert normalize("Two HOT-DOGS, please!") == " two hot dog , please ! "


@pytest.mark.parametrize("sentence,labels", [
    ("A hot-dog stand on the corner.", {"hot dog"}),
    ("Hotdog and a hot dog", {"hot dog"}),
    ("A motorbike and a motor bike", {"motorcycle"}),
    ("A dirt bike race", {"motorcycle"}),
    ("A bike next to a motorbike", {"bicycle", "motorcycle"}),
    ("Teddybears on a shelf", {"teddy bear"}),
    ("A cellphone and a smart phone", {"cell phone"}),
    ("The glasses of wine", {"wine glass"}),
    ("Carrots, cartons and a carpet", {"carrot"}),
    ("A pit bull and a bull", {"dog", "cow"}),
    ("An empty room with white walls.", set()),
])
def test_compounds_and_non_matches(sentence, labels):
    assert coco_names(COCO_LABELLER.classes_of(sentence)) == labels


@pytest.mark.parametrize("sentence,labels", [
    ("A tvmonitor on a diningtable", {"tvmonitor", "diningtable"}),
    ("A pottedplant near a sofa", {"pottedplant", "sofa"}),
    ("A man on a motorbike", {"person", "motorbike"}),
    ("Aeroplanes at an airport", {"aeroplane"}),
    ("A potted plant on the dining table", {"pottedplant", "diningtable"}),
])
def test_voc_class_names(sentence, labels):
    assert {VOC.labels[i] for i in VOC_LABELLER.classes_of(sentence)} == labels


def test_multiword_phrases_are_removed_before_single_words():
    labeller = Labeller([["dog"], ["hot dog"], ["bear"], ["teddy bear"]])
    assert labeller.classes_of("A hot dog next to a teddy bear") == [1, 3]
    assert labeller.classes_of("A hot dog next to a dog and a bear") == [0, 1, 2]


def test_longest_phrase_wins():
    labeller = Labeller([["hot dog"], ["hot dog bun"]])
    assert labeller.classes_of("An empty hot dog bun") == [1]


def test_synonyms_are_lemmatised_and_may_share_words():
    labeller = Labeller([["Skis"], ["animal", "dogs"], ["dog"]])
    assert labeller.classes_of("Two DOGS skiing") == [0, 1, 2]
    np.testing.assert_array_equal(labeller.label("a dog"), [0, 1, 1])
    assert labeller.label("a dog").dtype == np.float32


def test_label_all_marks_sentences_without_class():
    assert COCO_LABELLER.label_all(["A red carpet.", "A dog."]) == [[], [COCO.labels.index("dog")]]


def test_throughput():
    """600k COCO captions must label in a couple of minutes on one core (measured ~44k/s)."""
    rng = random.Random(0)
    words = "a man woman dog sitting riding on the bench with two pizzas near street".split()
    sentences = [" ".join(rng.choice(words) for _ in range(10)) for _ in range(20000)]
    start = time.perf_counter()
    COCO_LABELLER.label_all(sentences)
    assert len(sentences) / (time.perf_counter() - start) > 5000
