"""Evaluation metrics against values worked out by hand on five fixed samples."""

from __future__ import annotations

import math

import pytest
import torch

from pld_pipeline.student.run import eval_metrics

# Probabilities chosen by hand (6 classes); logits = log p, so softmax gives p back.
PROBS = [
    [0.50, 0.20, 0.10, 0.10, 0.06, 0.04],  # A: label 0, right, conf 0.50 -> bin 7 (7/15, 8/15]
    [0.10, 0.62, 0.08, 0.10, 0.06, 0.04],  # B: label 0, wrong, conf 0.62 -> bin 9
    [0.05, 0.90, 0.025, 0.015, 0.006, 0.004],  # C: label 5, wrong, not in top-5, bin 13
    [0.30, 0.25, 0.20, 0.15, 0.06, 0.04],  # D: label 0, right, conf 0.30 -> bin 4
    [0.52, 0.20, 0.10, 0.10, 0.05, 0.03],  # E: label 1, wrong, conf 0.52 -> bin 7 (with A)
]
LABELS = [0, 0, 5, 0, 1]


def logits() -> torch.Tensor:
    return torch.tensor(PROBS, dtype=torch.float64).log()


def test_metrics_equal_hand_computed_values():
    sums = eval_metrics.add_batch(eval_metrics.new_sums(), logits(), torch.tensor(LABELS))
    got = eval_metrics.finish(sums)
    assert got["samples"] == 5
    assert got["top1"] == pytest.approx(40.0)  # A, D
    assert got["top5"] == pytest.approx(80.0)  # all but C (its label has the least mass)
    nll = -(math.log(0.5) + math.log(0.1) + math.log(0.004) + math.log(0.3) + math.log(0.2)) / 5
    assert got["nll"] == pytest.approx(nll)
    assert got["confidence"] == pytest.approx(100 * (0.5 + 0.62 + 0.9 + 0.3 + 0.52) / 5)
    # Bin 7 holds A (right) and E (wrong): accuracy 1/2, confidence 0.51, so it adds only
    # 2/5 * 0.01; bins 9, 13 and 4 hold one sample each: |0-0.62|, |0-0.9|, |1-0.3|.
    ece = (2 * abs(0.5 - 0.51) + 0.62 + 0.9 + 0.7) / 5
    assert got["ece"] == pytest.approx(100 * ece)


def test_sums_add_over_batches_like_over_ranks():
    whole = eval_metrics.add_batch(eval_metrics.new_sums(), logits(), torch.tensor(LABELS))
    parts = eval_metrics.new_sums()
    for rows in ([0, 3], [1], [2, 4]):  # any split, in any order (float32 logits too)
        eval_metrics.add_batch(parts, logits()[rows].float(), torch.tensor(LABELS)[rows])
    a, b = eval_metrics.finish(whole), eval_metrics.finish(parts)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6), key


def test_bins_are_fifteen_equal_width_and_closed_on_the_right():
    edges = [k / 15 for k in range(16)]
    conf = torch.tensor(
        [0.0, edges[1], math.nextafter(edges[1], 1), 0.5, edges[9], 1.0], dtype=torch.float64
    )
    assert eval_metrics.bin_index(conf).tolist() == [0, 0, 1, 7, 8, 14]
    assert eval_metrics.ECE_BINS == 15


def test_a_perfectly_calibrated_bin_has_zero_error_and_top5_clips_to_the_class_count():
    # Two classes, confidence 0.75 for each sample, 3 of 4 right: ECE 0, top-5 = top-2 = 100.
    z = torch.tensor([[math.log(3.0), 0.0]] * 4, dtype=torch.float64)
    got = eval_metrics.finish(
        eval_metrics.add_batch(eval_metrics.new_sums(), z, torch.tensor([0, 0, 0, 1]))
    )
    assert got["ece"] == pytest.approx(0.0, abs=1e-9)
    assert (got["top1"], got["top5"]) == (pytest.approx(75.0), pytest.approx(100.0))
    assert got["confidence"] == pytest.approx(75.0)


def test_empty_evaluation_is_nan_not_an_error():
    got = eval_metrics.finish(eval_metrics.new_sums())
    assert got["samples"] == 0
    assert math.isnan(got["ece"])
    assert math.isnan(got["top1"])
