"""Evaluation: per-view scores aggregated by video id, classification metrics, reports and plots.

- ``aggregate.py``, ``metrics.py``: pure functions (views -> per-video scores -> top-k, confusion).
- ``views.py``: view sets (``4x3`` clips x crops, ``full`` frame); ``plan.py``: the passes (kind x view set x
  token budget/resolution) and their data configs.
- ``runner.py``: one rank's pass over a loader; ``evaluate.py``: every pass on one rank; ``summary.py``:
  the outputs of all ranks aggregated per video and checked, into metrics.
- ``report.py``, ``plots.py``: table, JSON, CSV, PNGs. ``cli.py``: tools/eval_video.py and eval_image.py.
"""

from mmvit.eval.aggregate import ViewScores, aggregate_views
from mmvit.eval.evaluate import evaluate_rank
from mmvit.eval.metrics import classification_metrics, confusion_matrix, topk_accuracy
from mmvit.eval.plan import EvalPass, EvalSettings, plan_passes
from mmvit.eval.runner import RankOutput, Throughput, evaluate_loader, gather_outputs
from mmvit.eval.summary import summarize
from mmvit.eval.views import ViewSet, parse_view_set, parse_view_sets

__all__ = [
    "ViewScores", "aggregate_views", "classification_metrics", "confusion_matrix", "topk_accuracy",
    "ViewSet", "parse_view_set", "parse_view_sets", "evaluate_loader", "RankOutput", "Throughput", "gather_outputs",
    "EvalSettings", "EvalPass", "plan_passes", "evaluate_rank", "summarize",
]
