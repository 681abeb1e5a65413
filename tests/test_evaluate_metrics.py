"""Evaluation metrics and estimators against hand-computed cases."""

from __future__ import annotations

import math

import pytest
import torch

from genbackbones.evaluate.data import mirror_permutation
from genbackbones.evaluate.metrics import (
    IGNORE_INDEX,
    balanced_accuracy,
    confusion_matrix,
    landmark_nme,
    mean_std,
    nme,
    segmentation_scores,
    top1,
)
from genbackbones.evaluate.tasks import FinetuneSettings, RidgeFit, finetune_steps, soft_argmax


def test_confusion_matrix_counts_rows_ground_truth_columns_prediction():
    target = torch.tensor([[0, 0, 1], [1, 2, IGNORE_INDEX]])
    pred = torch.tensor([[0, 1, 1], [2, 2, 0]])
    cm = confusion_matrix(pred, target, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]  # the ignored pixel is not counted


def test_segmentation_scores_from_a_known_confusion_matrix():
    # rows = ground truth, columns = prediction; class 3 never occurs and is never predicted.
    cm = torch.tensor([[50, 10, 0, 0],
                       [5, 30, 5, 0],
                       [0, 0, 0, 0],  # class 2: never in the ground truth, predicted 5 times
                       [0, 0, 0, 0]])
    s = segmentation_scores(cm, ["a", "b", "c", "d"])
    iou_a = 50 / (60 + 55 - 50)  # TP / (row + column - TP)
    iou_b = 30 / (40 + 40 - 30)
    iou_c = 0 / (0 + 5 - 0)  # predicted but absent: counts as 0
    assert s["iou"]["a"] == pytest.approx(100 * iou_a)
    assert s["iou"]["b"] == pytest.approx(100 * iou_b)
    assert s["iou"]["c"] == 0.0
    assert s["iou"]["d"] is None  # absent from ground truth and prediction: excluded
    assert s["classes_evaluated"] == 3
    assert s["miou"] == pytest.approx(100 * (iou_a + iou_b + iou_c) / 3)
    assert s["pixel_accuracy"] == pytest.approx(100 * 80 / 100)


def test_perfect_segmentation_scores_100():
    target = torch.randint(0, 4, (2, 8, 8))
    s = segmentation_scores(confusion_matrix(target, target, 5), list("abcde"))
    assert s["miou"] == pytest.approx(100.0) and s["pixel_accuracy"] == pytest.approx(100.0)
    assert s["iou"]["e"] is None


def test_nme_is_mean_point_error_over_inter_ocular_distance():
    gt = torch.tensor([[[0.0, 0.0], [10.0, 0.0], [5.0, 5.0]],
                       [[0.0, 0.0], [0.0, 20.0], [5.0, 5.0]]])
    pred = gt.clone()
    pred[0, 2] += torch.tensor([3.0, 4.0])  # error 5 on one point of image 0, IOD 10
    pred[1, 0] += torch.tensor([6.0, 8.0])  # error 10 on one point of image 1, IOD 20
    per_image = landmark_nme(pred, gt, (0, 1))
    assert per_image.tolist() == pytest.approx([(5 / 3) / 10, (10 / 3) / 20])
    assert nme(pred, gt, (0, 1)) == pytest.approx(100 * ((5 / 3) / 10 + (10 / 3) / 20) / 2)
    # other eye indices change the normaliser
    assert nme(pred, gt, (0, 2)) != nme(pred, gt, (0, 1))


def test_classification_accuracies():
    target = torch.tensor([0, 0, 0, 0, 1, 1])
    pred = torch.tensor([0, 0, 0, 0, 0, 1])
    assert top1(pred, target) == pytest.approx(100 * 5 / 6)
    assert balanced_accuracy(pred, target) == pytest.approx(100 * (1.0 + 0.5) / 2)


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))
    assert mean_std([4.0]) == (4.0, 0.0)
    assert all(math.isnan(v) for v in mean_std([]))


def test_ridge_recovers_a_linear_map_and_its_loo_matches_refitting():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g, dtype=torch.float64)
    w = torch.randn(6, 2, generator=g, dtype=torch.float64)
    y = x @ w + 3.0
    fit = RidgeFit(x, y)
    assert torch.allclose(fit.predict(x[:5]), y[:5], atol=0.05 * y.abs().max().item())

    # The closed-form leave-one-out residual equals the residual of an actual refit without sample i.
    noisy = y + 0.5 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    full = RidgeFit(x, noisy)
    z = (x - full.x_mean) / full.x_scale
    s, u = torch.linalg.eigh(z @ z.T)
    closed = RidgeFit._loo_error(u, s.clamp_min(0), u.T @ (noisy - full.y_mean), noisy - full.y_mean, full.alpha, 40)
    residuals = []
    for i in range(40):
        keep = [j for j in range(40) if j != i]
        zk, yk = z[keep], noisy[keep]
        zc, ym = zk - zk.mean(0), yk.mean(0)
        coef = torch.linalg.solve(zc.T @ zc + full.alpha * torch.eye(6, dtype=torch.float64), zc.T @ (yk - ym))
        residuals.append(noisy[i] - ((z[i] - zk.mean(0)) @ coef + ym))
    assert closed == pytest.approx(float(torch.stack(residuals).pow(2).mean()), rel=1e-6)


def test_ridge_scales_feature_levels_as_blocks():
    x = torch.cat([torch.randn(10, 3), 1000 * torch.randn(10, 2)], 1)
    fit = RidgeFit(x, torch.randn(10, 1), blocks=[3, 2])
    assert len(set(fit.x_scale[:3].tolist())) == 1 and len(set(fit.x_scale[3:].tolist())) == 1
    assert fit.x_scale[3] > 100 * fit.x_scale[0]


def test_soft_argmax_finds_a_peak_at_pixel_centres():
    logits = torch.full((1, 1, 4, 4), -50.0)
    logits[0, 0, 1, 2] = 50.0  # cell (row 1, col 2) of a stride-4 map for a 16 px image
    xy = soft_argmax(logits, 16)[0, 0]
    assert xy.tolist() == pytest.approx([2 * 4 + 1.5, 1 * 4 + 1.5])  # the cell's centre in pixel coordinates


def test_mirror_permutation_swaps_left_and_right_names():
    names = ["left_eye", "right_eye", "nose_tip", "left_mouth", "right_mouth"]
    assert mirror_permutation(names) == (1, 0, 2, 4, 3)
    assert mirror_permutation(["background", "l_brow", "r_brow", "skin"]) == (0, 2, 1, 3)
    assert mirror_permutation(["left", "frontal", "right"]) == (2, 1, 0)
    assert mirror_permutation(["background", "skin", "hair"]) == (0, 1, 2)


def test_finetune_steps_scale_with_labels_and_are_clamped():
    s = FinetuneSettings(epochs=100, min_steps=300, max_steps=2000, batch_size=8)
    assert finetune_steps(4, s) == 300
    assert finetune_steps(64, s) == 800
    assert finetune_steps(2000, s) == 2000


def test_knn_on_a_separable_toy_set_is_perfect_and_on_shuffled_labels_is_chance():
    from genbackbones.evaluate.tasks import knn_predict

    g = torch.Generator().manual_seed(0)
    centres = 10 * torch.randn(4, 32, generator=g)

    def sample(n):
        labels = torch.arange(n) % 4
        return centres[labels] + torch.randn(n, 32, generator=g), labels

    train_x, train_y = sample(200)
    test_x, test_y = sample(2000)
    pred = knn_predict(train_x, train_y, test_x, num_classes=4, k=20, temperature=0.07)
    assert top1(pred, test_y) == 100.0
    # labels shuffled against the features: nothing to find. (Shuffling only the 200 training labels of the
    # 4 clusters would not do: every test point of a cluster would get that cluster's one majority label.)
    noise_train, noise_test = torch.randn(200, 32, generator=g), torch.randn(2000, 32, generator=g)
    shuffled = train_y[torch.randperm(len(train_y), generator=g)]
    chance = top1(knn_predict(noise_train, shuffled, noise_test, num_classes=4, k=20, temperature=0.07), test_y)
    assert 25.0 - 4.0 < chance < 25.0 + 4.0  # 4 balanced classes; 2000 test points: std of chance ~1 %


def test_knn_votes_are_temperature_weighted_cosine_similarities():
    from genbackbones.evaluate.tasks import knn_predict

    # test point along +x; two class-1 neighbours at 60 degrees (cos 0.5), one class-0 neighbour at 0 degrees
    train_x = torch.tensor([[1.0, 0.0], [0.5, 0.866], [0.5, -0.866]])
    train_y = torch.tensor([0, 1, 1])
    test_x = torch.tensor([[3.0, 0.0]])  # cosine: the length does not matter
    # T = 0.07: exp(1/T) = 1.6e6 outweighs 2 exp(0.5/T) = 2.5e3, class 0 wins; T = 10: 1.105 < 2 x 1.051, class 1
    assert knn_predict(train_x, train_y, test_x, num_classes=2, k=3, temperature=0.07).tolist() == [0]
    assert knn_predict(train_x, train_y, test_x, num_classes=2, k=3, temperature=10.0).tolist() == [1]
    # k larger than the number of labelled images uses them all (4 labels, k=20)
    assert knn_predict(train_x, train_y, test_x, num_classes=2, k=20, temperature=10.0).tolist() == [1]
