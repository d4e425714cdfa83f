"""Several labelled datasets in one model: one head per task, losses within each task's classes, and the
isolation invariant across tasks (an example's loss and gradient do not depend on what else, of any task,
is packed with it)."""

import pytest
import torch
import torch.nn.functional as F

import mmvit
from mmvit.objectives.classification import Classification

TASKS = {"digits": 10, "moves": 8}
MODEL = {"width": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "patch_size": 8, "tasks": TASKS,
         "tokenizer": {"type": "central_frame", "frames": 2}, "pos_embed": {"type": "learned", "fractional": True},
         "head": {"type": "linear", "zero_init": False}}


def _samples(gen):
    images = [torch.randn(3, 8 * int(torch.randint(1, 4, (), generator=gen)), 16, generator=gen) for _ in range(5)]
    clips = [torch.randn(3, 4, 16, 8 * int(torch.randint(1, 3, (), generator=gen)), generator=gen) for _ in range(4)]
    samples = images + clips
    tasks = [0] * len(images) + [1] * len(clips)  # images: digits, clips: moves
    labels = [int(torch.randint(TASKS["digits"] if t == 0 else TASKS["moves"], (), generator=gen)) for t in tasks]
    return samples, tasks, labels


def test_each_example_gets_its_tasks_head_only():
    torch.manual_seed(0)
    model = mmvit.build_model(MODEL).eval()
    samples, tasks, labels = _samples(torch.Generator().manual_seed(1))
    batch = mmvit.pack(samples, patch_size=(2, 8, 8), seq_len=64, labels=labels, tasks=tasks)
    logits = model(batch)
    assert logits.shape == (len(samples), max(TASKS.values()))
    feats = model.forward_features(batch)
    for e, t in enumerate(batch.tasks.tolist()):
        head = model.task_heads[list(TASKS)[t]]
        k = list(TASKS.values())[t]
        torch.testing.assert_close(logits[e, :k], head(feats[e:e + 1])[0])
        assert torch.isinf(logits[e, k:]).all() and (logits[e, k:] < 0).all()  # argmax never leaves the task
    with pytest.raises(ValueError, match="must give tasks"):
        model.forward_head(feats)


def test_loss_is_each_tasks_cross_entropy_with_its_weight_and_smoothing():
    torch.manual_seed(0)
    model = mmvit.build_model(MODEL).eval()
    objective = Classification(model, label_smoothing=0.1, task_weights={"moves": 3.0})
    samples, tasks, labels = _samples(torch.Generator().manual_seed(2))
    batch = mmvit.pack(samples, patch_size=(2, 8, 8), seq_len=64, labels=labels, tasks=tasks)
    losses = objective(batch).losses
    logits = model(batch)
    for e, t in enumerate(batch.tasks.tolist()):
        k = list(TASKS.values())[t]
        # Smoothing spreads 0.1 over the task's k classes only: -(0.9 + 0.1/k) log p_y - sum_others 0.1/k log p
        logp = F.log_softmax(logits[e, :k], -1)
        y = int(batch.labels[e])
        ref = -(0.9 * logp[y] + 0.1 / k * logp.sum())
        torch.testing.assert_close(losses[e], ref * (3.0 if t == 1 else 1.0), rtol=1e-5, atol=1e-6)
    with pytest.raises(KeyError, match="no head"):
        Classification(model, task_weights={"cats": 1.0})


@pytest.mark.parametrize("attention", ["segments", "dense"])
def test_isolation_across_tasks(attention):
    """An example's loss and parameter gradients are the same alone and packed with examples of other tasks,
    images and videos mixed, in other rows and positions."""
    torch.manual_seed(0)
    model = mmvit.build_model({**MODEL, "attention": attention}).train()
    objective = Classification(model)
    samples, tasks, labels = _samples(torch.Generator().manual_seed(3))

    def loss_and_grads(index, subset, seq_len):
        idx = subset
        batch = mmvit.pack([samples[i] for i in idx], patch_size=(2, 8, 8), seq_len=seq_len,
                           labels=[labels[i] for i in idx], tasks=[tasks[i] for i in idx])
        e = batch.example_ids.tolist().index(idx.index(index))
        model.zero_grad()
        loss = objective(batch).losses[e]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, batch

    for index in (1, 6):  # an image of task digits, a clip of task moves
        ref_loss, ref_grads, _ = loss_and_grads(index, [index], 32)
        others = [i for i in range(len(samples)) if i != index]
        for subset, seq_len in ((others[:3] + [index] + others[3:], 48), ([index] + others[::-1], 64)):
            loss, grads, batch = loss_and_grads(index, subset, seq_len)
            assert batch.num_examples == len(samples) and len(set(batch.tasks.tolist())) == 2
            torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
            for n in set(grads) - set(ref_grads):  # the other task's head gets no gradient from this example
                assert n.startswith("task_heads.") and not grads[n].any(), n
            for n, g in ref_grads.items():
                torch.testing.assert_close(grads[n], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_every_head_takes_part_in_every_backward():
    """A batch without any example of a task still gives that task's head a (zero) gradient: under DeepSpeed
    every rank must all-reduce the same parameters, whatever tasks its micro-batch holds."""
    model = mmvit.build_model(MODEL).train()
    samples, tasks, labels = _samples(torch.Generator().manual_seed(4))
    batch = mmvit.pack(samples[:3], patch_size=(2, 8, 8), seq_len=64, labels=labels[:3], tasks=tasks[:3])
    assert set(batch.tasks.tolist()) == {0}
    Classification(model)(batch).losses.sum().backward()
    moves = [p.grad for n, p in model.named_parameters() if n.startswith("task_heads.moves.")]
    assert moves and all(g is not None and not g.any() for g in moves)
