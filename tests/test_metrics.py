import numpy as np
import pytest
import torch

from taidpt.metrics import average_precision_per_class, mean_average_precision


def _brute_force_ap(scores, targets, difficult):
    """AP by definition: for each positive, precision among the samples ranked at or above it.

    Sample ``k`` ranks at or above sample ``i`` if its score is higher, or equal with ``k <= i``.
    """
    n, c = scores.shape
    aps = []
    for cls in range(c):
        counted = [k for k in range(n) if difficult == "negative" or targets[k, cls] != 0]
        precisions = []
        for i in counted:
            if targets[i, cls] <= 0:
                continue
            above = [k for k in counted if scores[k, cls] > scores[i, cls]
                     or (scores[k, cls] == scores[i, cls] and k <= i)]
            precisions.append(sum(targets[k, cls] > 0 for k in above) / len(above))
        aps.append(100 * sum(precisions) / len(precisions) if precisions else float("nan"))
    return np.array(aps)


@pytest.mark.parametrize("scores, targets, expected", [
    ([0.9, 0.8, 0.7, 0.6], [1, -1, 1, -1], 100 * (1 + 2 / 3) / 2),
    ([0.9, 0.8, 0.7, 0.6], [1, 1, -1, -1], 100.0),
    ([0.9, 0.8, 0.7, 0.6], [-1, -1, 1, 1], 100 * (1 / 3 + 2 / 4) / 2),
    # ties keep input order: the earlier row ranks higher
    ([0.5, 0.5], [1, -1], 100.0),
    ([0.5, 0.5], [-1, 1], 50.0),
    ([0.7, 0.5, 0.5, 0.5], [-1, 1, -1, 1], 100 * (1 / 2 + 2 / 4) / 2),
    ([0.7, 0.5, 0.5, 0.5], [-1, -1, 1, 1], 100 * (1 / 3 + 2 / 4) / 2),
])
def test_ap_hand_computed(scores, targets, expected):
    ap = average_precision_per_class(np.array(scores)[:, None], np.array(targets)[:, None])
    assert ap == pytest.approx([expected], abs=1e-12)


@pytest.mark.parametrize("difficult, expected", [
    ("negative", 100 * (1 / 2 + 2 / 4) / 2),  # the difficult sample ranked first is negative
    ("ignore", 100 * (1 + 2 / 3) / 2),  # ... or is dropped
])
def test_difficult_modes(difficult, expected):
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[0], [1], [-1], [1]])
    assert mean_average_precision(scores, targets, difficult) == pytest.approx(expected, abs=1e-12)


def test_binary_targets_equal_ternary_with_negative_mode():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(30, 4))
    binary = (rng.random((30, 4)) < 0.3).astype(np.int64)
    binary[0] = 1
    ternary = np.where(binary > 0, 1, -1)
    np.testing.assert_array_equal(average_precision_per_class(scores, binary),
                                  average_precision_per_class(scores, ternary))


def test_class_without_positive_is_left_out_with_warning():
    scores = np.array([[0.9, 0.1, 0.2], [0.2, 0.3, 0.1], [0.4, 0.2, 0.3]])
    targets = np.array([[1, -1, 0], [-1, -1, 1], [1, -1, -1]])
    ap = average_precision_per_class(scores, targets, "ignore")
    assert ap[0] == pytest.approx(100.0) and np.isnan(ap[1]) and ap[2] == pytest.approx(50.0)
    with pytest.warns(UserWarning, match="1 of 3 classes have no positive"):
        assert mean_average_precision(scores, targets, "ignore") == pytest.approx(75.0)


def test_no_class_with_positive_gives_nan():
    with pytest.warns(UserWarning, match="2 of 2 classes"):
        assert np.isnan(mean_average_precision(np.zeros((3, 2)), -np.ones((3, 2))))


@pytest.mark.parametrize("difficult", ["negative", "ignore"])
def test_torch_and_numpy_inputs_agree(difficult):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(40, 5)).astype(np.float32)
    targets = rng.choice([-1, 0, 1], size=(40, 5))
    expected = mean_average_precision(scores, targets, difficult)
    got = mean_average_precision(torch.from_numpy(scores), torch.from_numpy(targets), difficult)
    assert isinstance(got, float) and got == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("difficult", ["negative", "ignore"])
def test_matches_brute_force_with_ties(seed, difficult):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random((60, 6)), 1)  # few distinct values: many ties
    targets = rng.choice([-1, 0, 1], size=(60, 6), p=[0.6, 0.1, 0.3])
    expected = _brute_force_ap(scores, targets, difficult)
    np.testing.assert_allclose(average_precision_per_class(scores, targets, difficult), expected,
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("scores, targets, difficult, match", [
    (np.zeros((2, 2)), np.ones((2, 2)), "skip", "not a valid mode"),
    (np.zeros((2, 2)), np.ones((2, 3)), "negative", "N x C"),
    (np.zeros(4), np.ones(4), "negative", "N x C"),
    (np.array([[np.nan], [0.0]]), np.ones((2, 1)), "negative", "NaN"),
])
def test_invalid_input(scores, targets, difficult, match):
    with pytest.raises(ValueError, match=match):
        mean_average_precision(scores, targets, difficult)
