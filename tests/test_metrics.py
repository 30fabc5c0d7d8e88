"""Accuracy and mean-class accuracy against hand-computed confusion matrices (the numbers every table reports)."""

from __future__ import annotations

import numpy as np
import pytest

from pointpeft.engine.classification import accuracy_metrics, confusion_matrix


def test_confusion_matrix_rows_are_true_classes_columns_predictions() -> None:
    target = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 0, 2])
    expected = np.array([[1, 1, 0],
                         [0, 1, 0],
                         [1, 0, 2]])
    np.testing.assert_array_equal(confusion_matrix(pred, target, 3), expected)


def test_unbalanced_classes_separate_overall_from_mean_class_accuracy() -> None:
    # class 0: 8 samples, 8 right; class 1: 2 samples, 0 right -> overall 8/10, per class (1 + 0) / 2
    target = np.array([0] * 8 + [1] * 2)
    pred = np.array([0] * 8 + [0] * 2)
    metrics, cm = accuracy_metrics(pred, target, 2)
    assert metrics["acc"] == pytest.approx(80.0)
    assert metrics["mean_class_acc"] == pytest.approx(50.0)
    np.testing.assert_array_equal(cm, [[8, 0], [2, 0]])


def test_three_classes_by_hand() -> None:
    # class 0: 3/4 right, class 1: 1/1, class 2: 1/3 -> overall 5/8, mean class (0.75 + 1 + 1/3) / 3
    target = np.array([0, 0, 0, 0, 1, 2, 2, 2])
    pred = np.array([0, 0, 0, 2, 1, 2, 0, 1])
    metrics, _ = accuracy_metrics(pred, target, 3)
    assert metrics["acc"] == pytest.approx(62.5)
    assert metrics["mean_class_acc"] == pytest.approx(100.0 * (0.75 + 1.0 + 1.0 / 3.0) / 3.0)


def test_class_never_predicted_counts_as_zero_in_the_mean() -> None:
    # class 2 is in the labels but never predicted: its recall 0 enters the mean
    target = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 0, 1, 1, 0, 1])
    metrics, cm = accuracy_metrics(pred, target, 3)
    assert cm[:, 2].sum() == 0
    assert metrics["acc"] == pytest.approx(100.0 * 6 / 8)
    assert metrics["mean_class_acc"] == pytest.approx(100.0 * (1 + 1 + 0) / 3)


def test_class_absent_from_the_labels_is_left_out_of_the_mean() -> None:
    # 4 classes in the head, class 3 has no sample (a 0/0 recall is not a zero): the mean is over classes 0-2;
    # a wrong prediction of class 3 still costs its sample's own class
    target = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 3, 0, 0, 1, 1, 2, 2])
    metrics, cm = accuracy_metrics(pred, target, 4)
    assert cm.shape == (4, 4) and cm[3].sum() == 0 and cm[0, 3] == 1
    assert metrics["acc"] == pytest.approx(100.0 * 7 / 8)
    assert metrics["mean_class_acc"] == pytest.approx(100.0 * (0.75 + 1 + 1) / 3)  # not / 4 with a 0 for class 3
    assert np.isfinite(metrics["mean_class_acc"])


def test_perfect_and_all_wrong() -> None:
    t = np.array([0, 1, 2, 3])
    assert accuracy_metrics(t, t, 4)[0] == {"acc": pytest.approx(100.0), "mean_class_acc": pytest.approx(100.0)}
    wrong = accuracy_metrics((t + 1) % 4, t, 4)[0]
    assert wrong == {"acc": 0.0, "mean_class_acc": 0.0}
