"""Exponential moving average of the weights (Polyak averaging), kept in fp32 beside the model.

``ema = decay * ema + (1 - decay) * w`` after every applied optimizer step; with ``warmup`` the decay
ramps as ``min(decay, (1 + n) / (10 + n))`` over the first updates (timm's and TF's scheme), so early
averages are not dominated by the random initialisation. Not for ZeRO-3 (its parameters are sharded).
"""

from __future__ import annotations

import torch


class EMA:
    def __init__(self, module: torch.nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup, self.updates = decay, warmup, 0
        self.shadow = {k: v.detach().float().clone() for k, v in module.state_dict().items()
                       if v.dtype.is_floating_point}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        d = self.current_decay()
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1.0 - d)
        self.updates += 1

    @torch.no_grad()
    def swap(self, module: torch.nn.Module) -> None:
        """Exchange the module's weights with the averages (call twice to swap back)."""
        state = module.state_dict()
        for k, s in self.shadow.items():
            live = state[k].detach().float().clone()
            state[k].copy_(s.to(state[k].dtype))
            self.shadow[k] = live

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            if k not in self.shadow:
                raise KeyError(f"EMA state has {k!r}, which the model does not")
            self.shadow[k] = v.to(self.shadow[k].device).float().clone()
