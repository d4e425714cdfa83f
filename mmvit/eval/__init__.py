"""Evaluation: per-view scores aggregated by video id, classification metrics, reports and plots."""

from mmvit.eval.aggregate import ViewScores, aggregate_views
from mmvit.eval.metrics import classification_metrics, confusion_matrix, topk_accuracy

__all__ = ["ViewScores", "aggregate_views", "classification_metrics", "confusion_matrix", "topk_accuracy"]
