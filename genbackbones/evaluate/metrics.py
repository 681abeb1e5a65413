"""Downstream metrics, written out so their definitions are unambiguous.

Every score is a percentage (0-100) so tables and plots read the same way for all tasks.

Segmentation scores come from one confusion matrix accumulated over the *whole* test
set (rows = ground truth, columns = prediction), not averaged per image:

- IoU of class c = TP / (TP + FP + FN) = cm[c,c] / (row c + column c - cm[c,c]).
- A class is *evaluated* when its union is non-empty, i.e. it occurs in the test
  ground truth or in the predictions. A class absent from both has IoU 0/0: it is
  reported as `None` and left out of the mean. A class that is predicted but never
  present scores IoU 0 and counts (false positives are penalised).
- mIoU = mean IoU over evaluated classes; pixel accuracy = trace / total.
- Pixels labelled `IGNORE_INDEX` (255) are excluded from everything.

Landmark error (NME) of one image = mean over points of the Euclidean error divided by
that image's inter-ocular distance (distance between the two ground-truth eye
points); the test NME is the mean over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

IGNORE_INDEX = 255


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX, num_pred: int | None = None) -> torch.Tensor:
    """int64 [C, P] counts, rows = ground truth, columns = prediction (P = `num_pred`, default C;
    a different P for predictions that are not classes, e.g. clusters)."""
    num_pred = num_classes if num_pred is None else num_pred
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.max()) >= num_classes or int(target.min()) < 0):
        raise ValueError(f"target classes must be in 0..{num_classes - 1} (or {ignore_index})")
    flat = target * num_pred + pred
    return torch.bincount(flat, minlength=num_classes * num_pred).reshape(num_classes, num_pred).cpu()


def segmentation_scores(cm: torch.Tensor, class_names: Sequence[str]) -> dict:
    """mIoU over evaluated classes, pixel accuracy and per-class IoU (percent) from a confusion matrix."""
    cm = cm.double()
    tp = cm.diag()
    union = cm.sum(0) + cm.sum(1) - tp
    evaluated = union > 0
    iou = torch.where(evaluated, tp / union.clamp(min=1), torch.zeros_like(tp)) * 100
    total = cm.sum()
    return {
        "miou": float(iou[evaluated].mean()) if evaluated.any() else float("nan"),
        "pixel_accuracy": float(tp.sum() / total * 100) if total > 0 else float("nan"),
        "iou": {name: (float(iou[i]) if evaluated[i] else None) for i, name in enumerate(class_names)},
        "classes_evaluated": int(evaluated.sum()),
    }


def landmark_nme(pred: torch.Tensor, target: torch.Tensor, eye_indices: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Per-image NME (fraction, not percent) for [N, K, 2] predictions and ground truth in pixels."""
    iod = (target[:, eye_indices[0]] - target[:, eye_indices[1]]).norm(dim=-1)
    if bool((iod <= 0).any()):
        raise ValueError("an image has zero inter-ocular distance (both eye points coincide)")
    return (pred - target).norm(dim=-1).mean(dim=1) / iod


def nme(pred: torch.Tensor, target: torch.Tensor, eye_indices: tuple[int, int] = (0, 1)) -> float:
    """Mean NME over images, in percent of the inter-ocular distance."""
    return float(landmark_nme(pred.double(), target.double(), eye_indices).mean() * 100)


def top1(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Top-1 accuracy in percent (`pred` are class indices)."""
    return float((pred.reshape(-1) == target.reshape(-1)).double().mean() * 100)


def balanced_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean per-class recall over classes present in `target`, in percent (robust to rare classes)."""
    pred, target = pred.reshape(-1), target.reshape(-1)
    recalls = [(pred[target == c] == c).double().mean() for c in target.unique()]
    return float(torch.stack(recalls).mean() * 100)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n-1); std is 0 for a single value."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
