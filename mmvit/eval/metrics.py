"""Classification metrics from scores ``[V, K]`` and labels ``[V]``: pure functions."""

from __future__ import annotations

import torch


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` highest scores (``k`` clipped to the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices
    return float((top == labels[:, None]).any(1).float().mean())


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts, rows = true class, columns = predicted class."""
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None,
                           classes: list[int] | None = None) -> dict:
    """top-1, top-5, mean per-class accuracy (over classes present) and the confusion matrix.

    ``classes``: restrict the mean per-class accuracy and the matrix to these class indices (e.g. the
    video classes of a mixed label space); scores still range over all classes.
    """
    num_classes = num_classes or scores.shape[1]
    pred = scores.argmax(1)
    cm = confusion_matrix(pred, labels, num_classes)
    present = cm.sum(1) > 0
    if classes is not None:
        keep = torch.zeros(num_classes, dtype=torch.bool)
        keep[torch.tensor(classes, dtype=torch.long)] = True
        present &= keep
    per_class = cm.diag().float() / cm.sum(1).clamp(min=1).float()
    return {
        "top1": topk_accuracy(scores, labels, 1),
        "top5": topk_accuracy(scores, labels, 5),
        "mean_class_acc": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class_acc": {int(c): float(per_class[c]) for c in torch.nonzero(present).flatten()},
        "confusion": cm.tolist(),
        "count": int(len(labels)),
    }
