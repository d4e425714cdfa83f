"""Multi-view testing: aggregate the scores of every view of a video by its id, never by position.

A video is evaluated as several views (temporal clips x spatial crops, PySlowFast's 10x3 style, and/or the
full frame at its native aspect ratio). Views arrive in any order, from any rank. ``aggregate_views``
groups them by ``video_id`` and checks that no (video, view) is counted twice and that every video has
the expected number of views, so a sharding bug shows up as an error instead of a quietly wrong number.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

Method = Literal["mean_prob", "mean_logit", "max_prob"]


@dataclasses.dataclass
class ViewScores:
    """Scores of evaluated views: ``logits [V, K]``, with a video id, view index and label per view."""

    video_ids: list[str]
    views: list[int]
    labels: torch.Tensor
    logits: torch.Tensor

    @staticmethod
    def concat(parts: list["ViewScores"]) -> "ViewScores":
        parts = [p for p in parts if len(p.video_ids)]
        if not parts:
            return ViewScores([], [], torch.zeros(0, dtype=torch.long), torch.zeros(0, 0))
        return ViewScores([v for p in parts for v in p.video_ids], [v for p in parts for v in p.views],
                          torch.cat([p.labels for p in parts]), torch.cat([p.logits for p in parts]))


def aggregate_views(scores: ViewScores, method: Method = "mean_prob", expected_views: int | None = None
                    ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """Combine views per video. Returns ``(video_ids, scores [N, K], labels [N])`` sorted by video id.

    ``mean_prob`` averages softmax probabilities (the default; PySlowFast sums them, same ranking),
    ``mean_logit`` averages logits, ``max_prob`` takes the per-class maximum.
    Raises ``ValueError`` on a duplicated (video, view), on views of one video that disagree on the label,
    or when a video has a number of views other than ``expected_views``.
    """
    if method not in ("mean_prob", "mean_logit", "max_prob"):
        raise ValueError(f"unknown aggregation {method!r}; choose mean_prob, mean_logit or max_prob")
    seen: set[tuple[str, int]] = set()
    for vid, view in zip(scores.video_ids, scores.views):
        if (vid, view) in seen:
            raise ValueError(f"view {view} of video {vid!r} was evaluated twice (sharding double-counted it)")
        seen.add((vid, view))
    ids = sorted(set(scores.video_ids))
    index = {v: i for i, v in enumerate(ids)}
    inv = torch.tensor([index[v] for v in scores.video_ids], dtype=torch.long)
    n, k = len(ids), scores.logits.shape[1]
    counts = torch.bincount(inv, minlength=n)
    if expected_views is not None and (counts != expected_views).any():
        bad = [(ids[i], int(c)) for i, c in enumerate(counts) if c != expected_views][:5]
        raise ValueError(f"videos with other than {expected_views} views (id, views): {bad}")
    values = scores.logits.float()
    if method != "mean_logit":
        values = values.softmax(1)
    if method == "max_prob":
        out = torch.full((n, k), -float("inf")).scatter_reduce(0, inv[:, None].expand(-1, k), values, "amax")
    else:
        out = torch.zeros(n, k).index_add_(0, inv, values) / counts[:, None].float()
    labels = torch.full((n,), -1, dtype=torch.long)
    labels[inv] = scores.labels.long()
    check = labels[inv]
    if not torch.equal(check, scores.labels.long()):
        i = int((check != scores.labels.long()).nonzero()[0])
        raise ValueError(f"views of video {scores.video_ids[i]!r} disagree on the label")
    return ids, out, labels
