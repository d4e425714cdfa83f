import random

import pytest
import torch

from mmvit.eval import ViewScores, aggregate_views, classification_metrics, confusion_matrix, topk_accuracy


def test_topk_and_confusion_against_loops():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 7, generator=g)
    labels = torch.randint(0, 7, (50,), generator=g)
    for k in (1, 3, 5):
        ref = sum(int(labels[i]) in scores[i].argsort(descending=True)[:k].tolist() for i in range(50)) / 50
        assert topk_accuracy(scores, labels, k) == pytest.approx(ref)
    cm = confusion_matrix(scores.argmax(1), labels, 7)
    ref = torch.zeros(7, 7, dtype=torch.long)
    for p, t in zip(scores.argmax(1).tolist(), labels.tolist()):
        ref[t, p] += 1
    assert torch.equal(cm, ref)
    m = classification_metrics(scores, labels)
    per_class = [ref[c, c] / ref[c].sum() for c in range(7) if ref[c].sum() > 0]
    assert m["mean_class_acc"] == pytest.approx(float(sum(per_class) / len(per_class)))
    assert m["count"] == 50


def _views(n_videos=6, n_views=3, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids, views, labels, logits = [], [], [], []
    for v in range(n_videos):
        for j in range(n_views):
            ids.append(f"vid{v}")
            views.append(j)
            labels.append(v % k)
            logits.append(torch.randn(k, generator=g))
    return ViewScores(ids, views, torch.tensor(labels), torch.stack(logits))


def test_aggregation_by_id_is_order_and_shard_independent():
    s = _views()
    ids, agg, labels = aggregate_views(s, expected_views=3)
    # Reference: loop per video, mean of softmax.
    for i, vid in enumerate(ids):
        rows = [j for j, x in enumerate(s.video_ids) if x == vid]
        torch.testing.assert_close(agg[i], s.logits[rows].softmax(1).mean(0))
    # Shuffled and split over "ranks": same result.
    perm = list(range(len(s.video_ids)))
    random.Random(0).shuffle(perm)
    shards = [perm[r::3] for r in range(3)]
    parts = [ViewScores([s.video_ids[i] for i in sh], [s.views[i] for i in sh], s.labels[sh], s.logits[sh])
             for sh in shards]
    ids2, agg2, labels2 = aggregate_views(ViewScores.concat(parts), expected_views=3)
    assert ids2 == ids and torch.equal(labels2, labels)
    torch.testing.assert_close(agg2, agg)


def test_aggregation_catches_double_count_and_missing_views():
    s = _views()
    dup = ViewScores.concat([s, ViewScores(s.video_ids[:1], s.views[:1], s.labels[:1], s.logits[:1])])
    with pytest.raises(ValueError, match="evaluated twice"):
        aggregate_views(dup)
    short = ViewScores(s.video_ids[1:], s.views[1:], s.labels[1:], s.logits[1:])
    with pytest.raises(ValueError, match="other than 3 views"):
        aggregate_views(short, expected_views=3)


def test_aggregation_methods():
    s = ViewScores(["a", "a"], [0, 1], torch.tensor([1, 1]), torch.tensor([[0.0, 2.0], [4.0, 0.0]]))
    _, mean_logit, _ = aggregate_views(s, "mean_logit")
    torch.testing.assert_close(mean_logit, torch.tensor([[2.0, 1.0]]))
    _, mx, _ = aggregate_views(s, "max_prob")
    torch.testing.assert_close(mx, torch.stack([s.logits[1].softmax(0)[0], s.logits[0].softmax(0)[1]])[None])
