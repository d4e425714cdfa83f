"""Evaluation: per-view scores aggregated by video id, classification metrics, reports and plots.

- ``aggregate.py``, ``metrics.py``: pure functions (views -> per-video scores -> top-k, confusion).
- ``views.py``: view sets (``4x3`` clips x crops, ``full`` frame); ``runner.py``: one rank's pass over a loader.
- ``evaluate.py``: the passes (kind x view set x token budget/resolution), per rank, and their summary.
- ``checkpoint.py``: weights + config of a run dir, safetensors file or DeepSpeed checkpoint.
- ``report.py``, ``plots.py``: table, JSON, CSV, PNGs. ``cli.py``: tools/eval_video.py and eval_image.py.
"""

from mmvit.eval.aggregate import ViewScores, aggregate_views
from mmvit.eval.checkpoint import LoadedCheckpoint, load_for_eval
from mmvit.eval.evaluate import EvalPass, EvalSettings, evaluate_rank, plan_passes, summarize
from mmvit.eval.metrics import classification_metrics, confusion_matrix, topk_accuracy
from mmvit.eval.runner import RankOutput, Throughput, gather_outputs, run_eval
from mmvit.eval.views import ViewSet, parse_view_set, parse_view_sets

__all__ = [
    "ViewScores", "aggregate_views", "classification_metrics", "confusion_matrix", "topk_accuracy",
    "ViewSet", "parse_view_set", "parse_view_sets", "run_eval", "RankOutput", "Throughput", "gather_outputs",
    "EvalSettings", "EvalPass", "plan_passes", "evaluate_rank", "summarize", "load_for_eval", "LoadedCheckpoint",
]
