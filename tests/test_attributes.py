import numpy as np
import pytest

from nodule_net.attributes import ATTRIBUTES, RATING_MAX, RATING_MIN, attribute_index, denormalise, normalise


def test_ranges_are_the_papers():
    ranges = dict(zip(ATTRIBUTES, zip(RATING_MIN, RATING_MAX, strict=True), strict=True))
    assert ranges["internal_structure"] == (1, 4)
    assert ranges["calcification"] == (1, 6)
    assert all(ranges[a] == (1, 5) for a in ATTRIBUTES if a not in ("internal_structure", "calcification"))


def test_normalise_round_trip_and_subsets():
    ratings = np.array([[1, 1, 1, 1, 1, 1, 1, 1, 1], [5, 4, 6, 5, 5, 5, 5, 5, 5], [3, 2.5, 3.5, 3, 3, 3, 3, 3, 3]])
    scores = normalise(ratings)
    np.testing.assert_allclose(scores[0], 0)
    np.testing.assert_allclose(scores[1], 1)
    np.testing.assert_allclose(scores[2], 0.5)
    np.testing.assert_allclose(denormalise(scores), ratings)
    np.testing.assert_allclose(denormalise(np.array([[0.5, 0.5]]), ("calcification", "Mal")), [[3.5, 3.0]])


def test_attribute_index_names_and_errors():
    assert attribute_index("malignancy") == attribute_index("Mal") == 8
    with pytest.raises(ValueError, match="Unknown attribute 'malignant'"):
        attribute_index("malignant")
