"""Exact checks of the GPZ rules (vortex/core/gpz.py) that `make mutation` showed no other test makes."""

import pytest

from vortex.core.gpz import locate_gpz, locate_posthoc
from vortex.errors import ProfileError


def test_the_record_names_its_quantity_and_rule():
    g = locate_gpz([1.0, 0.5, 0.45])
    assert g.quantity == "rho"
    assert g.criterion == (
        "largest relative drop of rho between consecutive splits; zone joins an adjacent drop of at least 20%"
    )
    r = locate_gpz([1.0, 0.5, 0.45], "rc2", zone_threshold=0.35)
    assert r.quantity == "rc2"
    assert r.criterion.endswith("of rc2 between consecutive splits; zone joins an adjacent drop of at least 35%")


def test_errors_say_what_was_given():
    with pytest.raises(ProfileError, match=r"^locating a GPZ needs at least 2 splits, got 1$"):
        locate_gpz([0.4])
    with pytest.raises(ProfileError, match=r"^3 split indices but 2 MSE values$"):
        locate_posthoc([1, 2, 3], [0.01, 0.02])


@pytest.mark.parametrize("indices", [[2, 2], [1, 3, 2], [1, 2, 4, 4]])
def test_posthoc_refuses_indices_that_do_not_strictly_increase(indices):
    with pytest.raises(ProfileError, match=r"^split indices must increase, got \[" + ", ".join(map(str, indices))):
        locate_posthoc(indices, [0.01 * (i + 1) for i in range(len(indices))])


def test_three_splits_with_two_adjacent_large_drops_form_a_zone():
    # drops 0.5 into split 2 and 0.6 into split 3: the largest at 3, its neighbour (>= 20%) joins
    gpz = locate_gpz([1.0, 0.5, 0.2])
    assert (gpz.index, gpz.zone) == (3, [2, 3])
