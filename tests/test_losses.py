import math

import pytest
import torch
import torch.nn.functional as F

from taidpt.config import ConfigValueError, setup_cfg
from taidpt.losses import (LOSSES, REFERENCE_LOSSES, asl_loss, bce_loss, double_loss, focal_loss,
                           ranking_loss)


def _brute_force_ranking(logits, labels, margin):
    total = 0.0
    for z, y in zip(logits.tolist(), labels.tolist()):
        for i in range(len(z)):
            for j in range(len(z)):
                if y[i] > 0 and not y[j] > 0:
                    total += max(0.0, margin - z[i] + z[j])
    return total / len(logits)


def _direct_asl(logits, labels, gamma_neg, gamma_pos, clip, eps, mask=None):
    total = 0.0
    for b, (z_row, y_row) in enumerate(zip(logits.tolist(), labels.tolist())):
        for c, (z, y) in enumerate(zip(z_row, y_row)):
            if mask is not None and not mask[b, c]:
                continue
            p = 1 / (1 + math.exp(-z))
            if y > 0:
                total -= (1 - p) ** gamma_pos * math.log(max(p, eps))
            else:
                p_m = max(p - clip, 0.0)
                total -= p_m ** gamma_neg * math.log(max(1 - p_m, eps))
    return total / len(logits)


def _random_batch(seed, batch=7, classes=6, values=(0.0, 1.0)):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 2
    choice = torch.randint(len(values), (batch, classes), generator=generator)
    labels = torch.tensor(values, dtype=torch.float64)[choice]
    labels[0] = 0  # a row without positives
    labels[1] = 1  # a row without negatives
    return logits, labels


def test_ranking_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.5, 0.0]])
    labels = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    # row 0: both hinges are exactly 0; row 1: 2 pairs of 1 - 0 + 0.5
    assert ranking_loss(logits, labels).item() == pytest.approx((0 + 3.0) / 2)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3])
@pytest.mark.parametrize("values", [(0.0, 1.0), (-1.0, 0.0, 1.0)])
def test_ranking_matches_brute_force(seed, margin, values):
    logits, labels = _random_batch(seed, values=values)
    expected = _brute_force_ranking(logits, labels, margin)
    assert ranking_loss(logits, labels, margin).item() == pytest.approx(expected, rel=1e-12)


def test_ranking_rows_without_pairs_count_in_the_mean():
    logits = torch.randn(2, 4)
    assert ranking_loss(logits, torch.tensor([[0.0] * 4, [1.0] * 4])).item() == 0.0


def test_ranking_gradient():
    logits, labels = _random_batch(3)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: ranking_loss(z, labels), (logits,))


@pytest.mark.parametrize("loss_fn", [ranking_loss, bce_loss, asl_loss, focal_loss])
def test_inputs_not_modified(loss_fn):
    logits, labels = _random_batch(4, values=(-1.0, 0.0, 1.0))
    logits_before, labels_before = logits.clone(), labels.clone()
    logits.requires_grad_(True)
    loss_fn(logits, labels).backward()
    assert torch.equal(logits.detach(), logits_before) and torch.equal(labels, labels_before)


def test_bce_treats_non_positive_as_negative():
    logits, labels = _random_batch(5, values=(-1.0, 0.0, 1.0))
    expected = F.binary_cross_entropy_with_logits(logits, (labels > 0).double())
    assert bce_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-12)


def test_asl_hand_computed():
    # p = 0.5: positive 0.5 * ln 2; negative p_m = 0.45: 0.45^2 * -ln(0.55)
    value = asl_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]])).item()
    assert value == pytest.approx(0.5 * math.log(2) - 0.45 ** 2 * math.log(0.55), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("clip", [0.05, 0.0])
@pytest.mark.parametrize("gammas", [(2.0, 1.0), (4.0, 0.0)])
@pytest.mark.parametrize("partial", [False, True])
def test_asl_matches_direct_formula(seed, clip, gammas, partial):
    gamma_neg, gamma_pos = gammas
    logits, labels = _random_batch(seed, values=(-1.0, 0.0, 1.0) if partial else (0.0, 1.0))
    mask = labels != 0 if partial else None
    expected = _direct_asl(logits, labels, gamma_neg, gamma_pos, clip, 1e-8, mask)
    got = asl_loss(logits, labels, gamma_neg, gamma_pos, clip, mask=mask)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_asl_gradient_with_and_without_focal_weight_gradient():
    logits, labels = _random_batch(6)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: asl_loss(z, labels, detach_focal_weights=False), (logits,))
    full = torch.autograd.grad(asl_loss(logits, labels, detach_focal_weights=False), logits)[0]
    detached = torch.autograd.grad(asl_loss(logits, labels), logits)[0]
    # with detached weights the gradient of an entry is weight * d(-log likelihood)/dz
    prob = torch.sigmoid(logits.detach())
    positive = labels > 0
    prob_m = (prob - 0.05).clamp_min(0)
    negative_grad = prob_m ** 2 * prob * (1 - prob) / (1 - prob_m) * (prob > 0.05)
    expected = torch.where(positive, -(1 - prob) * (1 - prob), negative_grad) / len(logits)
    torch.testing.assert_close(detached, expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(full, detached)


@pytest.mark.parametrize("name, local_weight, loss_fn", [
    ("double_ranking", 1, ranking_loss),
    ("ranking", 0, ranking_loss),
    ("bce", 1, bce_loss),
    ("asl", 1, asl_loss),
])
def test_double_loss_dispatch(name, local_weight, loss_fn):
    global_logits, labels = _random_batch(7)
    local_logits = torch.randn_like(global_logits)
    expected = loss_fn(global_logits, labels) + local_weight * loss_fn(local_logits, labels)
    assert double_loss(name, global_logits, local_logits, labels).item() == pytest.approx(
        expected.item(), rel=1e-12)


def test_double_loss_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="double_ranking, ranking, bce, asl, ranking_scale2"):
        double_loss("sigmoid", torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2))


def test_losses_registry():
    assert LOSSES == {"ranking": ranking_loss, "bce": bce_loss, "asl": asl_loss, "focal": focal_loss}


# The reference's TRAIN.LOSSFUNC values, computed by hand (plain Python loops over the entries) as
# its Caption_distill_double defines them: "ranking" scales the logits by 2 inside the hinge and
# trains the global branch only; "asl" averages over B x C on both branches.
def _hand_reference_ranking(logits, labels):
    return _brute_force_ranking(2 * logits, labels, 1.0)


def _hand_reference_asl(logits, labels):
    return _direct_asl(logits, labels, 2.0, 1.0, 0.05, 1e-8) / logits.shape[1]


def _hand_focal(logits, labels, alpha=0.25, gamma=2.0):
    total = 0.0
    for z_row, y_row in zip(logits.tolist(), labels.tolist()):
        for z, y in zip(z_row, y_row):
            p = 1 / (1 + math.exp(-z))
            p_t, a_t = (p, alpha) if y > 0 else (1 - p, 1 - alpha)
            total -= a_t * (1 - p_t) ** gamma * math.log(p_t)
    return total / logits.numel()


def _hand_bce(logits, labels):
    total = 0.0
    for z_row, y_row in zip(logits.tolist(), labels.tolist()):
        for z, y in zip(z_row, y_row):
            p = 1 / (1 + math.exp(-z))
            total -= math.log(p) if y > 0 else math.log(1 - p)
    return total / logits.numel()


HAND_REFERENCE = {  # the reference's TRAIN.LOSSFUNC -> (global, local) -> hand-computed loss
    "double_ranking": lambda g, l, y: _brute_force_ranking(g, y, 1.0) + _brute_force_ranking(l, y, 1.0),
    "ranking": lambda g, l, y: _hand_reference_ranking(g, y),
    "sigmoid": lambda g, l, y: _hand_bce(g, y) + _hand_bce(l, y),
    "focal": lambda g, l, y: _hand_focal(g, y),
    "asl": lambda g, l, y: _hand_reference_asl(g, y) + _hand_reference_asl(l, y),
}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("reference_name", sorted(HAND_REFERENCE))
def test_reference_lossfunc_values_have_the_reference_meaning(reference_name, seed):
    """TRAIN.LOSSFUNC (reference key) -> our TRAINER.TAIDPT.LOSS, whose loss equals the hand
    computation of the reference's on random inputs."""
    cfg = setup_cfg(opts=["TRAINER.NAME", "TaIDPT", "TRAIN.LOSSFUNC", reference_name])
    ours = cfg.TRAINER.TAIDPT.LOSS
    assert ours == REFERENCE_LOSSES[reference_name]
    global_logits, labels = _random_batch(seed, batch=5, classes=7)
    local_logits = torch.randn(global_logits.shape, dtype=torch.float64,
                               generator=torch.Generator().manual_seed(seed + 10)) * 2
    expected = HAND_REFERENCE[reference_name](global_logits, local_logits, labels)
    got = double_loss(ours, global_logits, local_logits, labels).item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_reference_ranking_and_asl_differ_from_ours():
    """The same words, other meanings: our ranking has no scale, our asl divides by B only."""
    global_logits, labels = _random_batch(3, batch=6, classes=5)
    local_logits = torch.zeros_like(global_logits)
    ours = double_loss("ranking", global_logits, local_logits, labels).item()
    assert ours == pytest.approx(_brute_force_ranking(global_logits, labels, 1.0), rel=1e-12)
    assert ours != pytest.approx(_hand_reference_ranking(global_logits, labels), rel=1e-3)
    ours_asl = asl_loss(global_logits, labels).item()
    assert ours_asl == pytest.approx(5 * asl_loss(global_logits, labels, mean=True).item(), rel=1e-12)
    assert ours_asl == pytest.approx(_direct_asl(global_logits, labels, 2.0, 1.0, 0.05, 1e-8), rel=1e-12)


def test_own_loss_names_pass_unchanged_and_unknown_reference_values_are_named():
    assert setup_cfg(opts=["TRAINER.TAIDPT.LOSS", "ranking"]).TRAINER.TAIDPT.LOSS == "ranking"
    with pytest.raises(ConfigValueError, match="TRAIN.LOSSFUNC .*ranking_scale2"):
        setup_cfg(opts=["TRAINER.NAME", "TaIDPT", "TRAIN.LOSSFUNC", "ranking_scale2"])


def test_focal_gradient():
    logits, labels = _random_batch(8)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: focal_loss(z, labels), (logits,))


@pytest.mark.parametrize("name", ["bce", "asl"])
def test_known_label_loss_ignores_unknown_labels(name):
    from taidpt.losses import known_label_loss
    torch.manual_seed(0)
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([[1, -1, 0, 0, 1, -1]] * 4, dtype=torch.float64)
    loss = known_label_loss(name, logits, labels)
    grad, = torch.autograd.grad(loss, logits)
    assert (grad[:, 2:4] == 0).all() and (grad[:, [0, 1, 4, 5]] != 0).all()
    # unknown entries' logits do not move the loss
    moved = logits.detach().clone()
    moved[:, 2:4] += 5.0
    assert known_label_loss(name, moved, labels).item() == pytest.approx(loss.item(), rel=1e-12)


def test_known_label_loss_bce_is_mean_over_known_entries():
    from taidpt.losses import known_label_loss
    torch.manual_seed(1)
    logits = torch.randn(3, 5, dtype=torch.float64)
    labels = torch.tensor([[1, -1, 0, -1, 1], [0, 0, 1, -1, -1], [-1, 1, 1, 0, -1]], dtype=torch.float64)
    known = labels != 0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[known], (labels[known] > 0).double())
    assert known_label_loss("bce", logits, labels).item() == pytest.approx(expected.item(), rel=1e-12)
    assert known_label_loss("asl", logits, labels).item() == pytest.approx(
        asl_loss(logits, labels, mask=known).item(), rel=1e-12)
    with pytest.raises(ValueError, match="choose one of bce, asl"):
        known_label_loss("ranking", logits, labels)
