"""Optimizers (SGD, AdamW, LAMB) and the per-step warmup-cosine learning-rate schedule.

torch ships no LAMB, so a small one is here (You et al. 2020, "Large Batch Optimization for
Deep Learning: Training BERT in 76 minutes", Algorithm 2): an Adam step with decoupled
weight decay, rescaled per parameter tensor by the trust ratio ||w|| / ||update||. Unlike
timm's Lamb it does no built-in global-norm clipping (use OptimConfig.clip_grad_norm) and
applies the trust ratio to every tensor, decayed or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from pld_pipeline.configs.train import OptimConfig


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments, decoupled weight decay, per-tensor trust ratio.

    update = m_hat / (sqrt(v_hat) + eps) + weight_decay * w
    w <- w - lr * (||w|| / ||update||) * update   (ratio 1 when either norm is 0)
    """

    def __init__(
        self,
        params: Iterable,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001, ANN201 - torch's Optimizer.step signature
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = float(state["step"])
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(p.grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                update = m_hat / (v_hat.sqrt() + group["eps"])
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = p.norm(), update.norm()
                trust = torch.where(
                    (w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm)
                )
                p.add_(update * trust, alpha=-group["lr"])
        return loss


def param_groups(model: nn.Module, weight_decay: float, decay_all: bool) -> list[dict]:
    """Split parameters into decayed (>= 2-D weights) and not decayed (biases, norm scales).

    Decaying 1-D parameters hurts normalised networks (timm's default filters them too).
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (decay if decay_all or p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def make_optimizer(model: nn.Module, config: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by `config.name` over `model`'s trainable parameters.

    SGD uses coupled L2 decay (as torchvision's references do); AdamW and LAMB decouple it.
    """
    groups = param_groups(model, config.weight_decay, config.decay_norm_and_bias)
    if config.name == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    return Lamb(groups, lr=config.lr, betas=config.betas, eps=config.eps)


class WarmupCosine:
    """LR factor at optimizer step s: linear warmup to 1, then cosine down to min_ratio.

    A plain object (not a closure) so LambdaLR's state_dict captures it with its numbers.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = max(total_steps, warmup_steps + 1)
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / (self.total_steps - self.warmup_steps))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: OptimConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step schedule: `warmup_epochs` of linear warmup, then cosine to `min_lr`.

    Call `.step()` after every optimizer step.
    """
    warmup = round(config.warmup_epochs * steps_per_epoch)
    factor = WarmupCosine(warmup, epochs * steps_per_epoch, config.min_lr / config.lr)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
