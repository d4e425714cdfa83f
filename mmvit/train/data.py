"""The trainer's door to data: ``data.type: synthetic`` (mmvit/train/synthetic.py) or the real pipeline.

Both return ``(loader, control)``: the loader yields ``PackedBatch`` of exactly ``[batch_rows, seq_len]``,
and ``control.set_stage`` / ``state_dict`` / ``load_state_dict`` / ``stats`` steer it (docs/data.md).
"""

from __future__ import annotations


def build_loader(data_cfg: dict, *, split: str, rank: int, world_size: int, seed: int, stage: dict | None = None,
                 train: bool):
    if (data_cfg or {}).get("type") == "synthetic":
        from mmvit.train.synthetic import build_loader as build
    else:
        from mmvit.data import build_loader as build
    return build(dict(data_cfg), split=split, rank=rank, world_size=world_size, seed=seed, stage=stage, train=train)
