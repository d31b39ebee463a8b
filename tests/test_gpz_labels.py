"""The a-priori GPZ rule and the soft-target loss."""

import pytest
import torch
import torch.nn.functional as F

from vortex.core.gpz import locate_gpz, locate_posthoc, relative_drops
from vortex.errors import ProfileError, VortexError
from vortex.training.loss import soft_target_loss, soft_targets


def test_relative_drops_by_hand():
    assert relative_drops([1.0, 0.9, 0.45, 0.4]) == pytest.approx([0.1, 0.5, 0.05 / 0.45])
    assert relative_drops([0.0, 1.0]) == [0.0]


def test_gpz_is_the_split_after_the_largest_drop():
    g = locate_gpz([1.0, 0.95, 0.9, 0.3, 0.28, 0.27])
    assert g.index == 4 and g.zone == [4]


def test_adjacent_big_drops_make_a_two_split_zone():
    g = locate_gpz([1.0, 0.95, 0.6, 0.2, 0.19])  # drops 5%, 37%, 67%, 5%
    assert g.index == 4 and g.zone == [3, 4]


def test_distant_second_drop_stays_out_of_the_zone():
    g = locate_gpz([1.0, 0.6, 0.58, 0.57, 0.1])  # 40% at split 2, 82% at split 5, small between
    assert g.index == 5 and g.zone == [5]


def test_gpz_needs_two_splits():
    with pytest.raises(ProfileError):
        locate_gpz([1.0])


def test_posthoc_largest_rise():
    assert locate_posthoc([1, 2, 3, 4], [0.01, 0.012, 0.05, 0.055]).index == 3


def test_posthoc_on_a_subset_of_splits():
    post = locate_posthoc([1, 3, 5], [0.01, 0.012, 0.05])
    assert post.index == 5 and post.interval == [4, 5]
    assert post.rises == pytest.approx([0.002, 0.038])
    with pytest.raises(ProfileError, match="must increase"):
        locate_posthoc([3, 1], [0.01, 0.02])
    with pytest.raises(ProfileError, match="2 or more"):
        locate_posthoc([2], [0.01])


def test_soft_targets_rows():
    t = soft_targets(torch.tensor([0, 2]), 4, -0.05)
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert t[0, 0] == pytest.approx(1.05) and t[0, 1] == pytest.approx(-0.05 / 3)


def test_matches_torch_label_smoothing_for_positive_alpha():
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    s = 0.2  # torch spreads s over all C classes: alpha = s (C-1)/C
    ours = soft_target_loss(logits, y, s * 4 / 5)
    assert ours.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=s).item(), rel=1e-5)
    assert soft_target_loss(logits, y, 0.0).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def test_negative_alpha_by_hand_and_per_class():
    logits, y = torch.randn(3, 3), torch.tensor([0, 1, 2])
    logp = F.log_softmax(logits, 1)
    alpha = torch.tensor([-0.1, 0.0, 0.3])
    expected = 0.0
    for i in range(3):
        a = alpha[y[i]]
        target = torch.full((3,), a / 2)
        target[y[i]] = 1 - a
        expected += -(target * logp[i]).sum() / 3
    assert soft_target_loss(logits, y, alpha).item() == pytest.approx(expected.item(), rel=1e-5)


def test_alpha_of_one_is_refused():
    with pytest.raises(VortexError, match="below 1"):
        soft_target_loss(torch.randn(2, 3), torch.tensor([0, 1]), 1.0)
