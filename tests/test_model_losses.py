"""model.losses: one-hot targets and class indices (the losses themselves: test_model_layers)."""

import numpy as np
import pytest

from model.losses import class_indices, one_hot


def test_one_hot():
    out = one_hot(np.array([0, 3, 9], np.uint8))
    assert out.shape == (3, 10) and out.dtype == np.float32
    np.testing.assert_array_equal(out.argmax(axis=1), [0, 3, 9])
    np.testing.assert_array_equal(out.sum(axis=1), 1)
    assert one_hot([1, 0], num_classes=2, dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match=r"\[0, 10\): labels\[1\] = 10"):
        one_hot(np.array([2, 10, 11]))
    with pytest.raises(ValueError, match=r"labels\[0\] = -1"):
        one_hot(np.array([-1]))
    with pytest.raises(ValueError, match="1-D integer"):
        one_hot(np.array([0.0, 1.0]))


def test_class_indices():
    np.testing.assert_array_equal(class_indices(one_hot(np.array([4, 0, 7]))), [4, 0, 7])
    labels = np.array([3, 1])
    np.testing.assert_array_equal(class_indices(labels), labels)
