"""Adam on linear softmax heads with the gradients written out: the aux-head refresh
without autograd.

The refresh runs thousands of tiny steps every tau period (a [d, k] head, batches of 128),
where autograd's graph building and the optimizer's per-parameter bookkeeping cost far more
than the arithmetic: on a 60,000-sample split it took about half of a mask epoch on CPU.
The gradient of a mean cross-entropy with respect to a linear layer is a closed form, and
torch's Adam (defaults, no weight decay, no amsgrad) is a few in-place tensor operations,
so this computes the same updates (to float rounding) in a handful of kernels per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults, which train_heads uses


class _AdamState:
    """exp_avg / exp_avg_sq / step of one tensor, updated as torch.optim.Adam does."""

    def __init__(self, param: torch.Tensor) -> None:
        self.param = param
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)
        self.step = 0

    def update(self, grad: torch.Tensor, lr: float) -> None:
        self.step += 1
        self.exp_avg.lerp_(grad, 1 - BETA1)
        self.exp_avg_sq.mul_(BETA2).addcmul_(grad, grad, value=1 - BETA2)
        bias_correction1 = 1 - BETA1**self.step
        bias_correction2_sqrt = math.sqrt(1 - BETA2**self.step)
        denom = (self.exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(EPS)
        self.param.addcdiv_(self.exp_avg, denom, value=-lr / bias_correction1)


def fit_linear_heads_adam(heads: list[nn.Linear], z: torch.Tensor, b: torch.Tensor, *, epochs: int, lr: float,
                          batch_size: int, generator: torch.Generator) -> None:
    """Minimise sum_j mean CE(heads[j](z), b[:, j]) by minibatch Adam, in place.

    Draws the same permutations from ``generator`` as the autograd loop in
    ``objective.train_heads``, so a run's random stream does not depend on which is used.
    Each head's weight and bias are trained as one [k, d + 1] matrix against z with a
    column of ones appended (Adam is elementwise, so that is the same optimisation), and
    each epoch gathers its shuffled rows once, so a step is a few slices and matmuls.
    """
    with torch.no_grad():
        z1 = torch.cat([z, torch.ones(len(z), 1, dtype=z.dtype, device=z.device)], dim=1)
        thetas = [torch.cat([h.weight, h.bias[:, None]], dim=1).to(z.dtype) for h in heads]
        states = [_AdamState(theta) for theta in thetas]
        n = len(z)
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(z.device)
            z_epoch, b_epoch = z1[order], b[order]
            for start in range(0, n, batch_size):
                zb = z_epoch[start : start + batch_size]
                rows = torch.arange(len(zb), device=z.device)
                for j, (theta, state) in enumerate(zip(thetas, states)):
                    grad_logits = F.softmax(zb @ theta.t(), dim=1).div_(len(zb))
                    grad_logits[rows, b_epoch[start : start + batch_size, j]] -= 1.0 / len(zb)
                    state.update(grad_logits.t() @ zb, lr)
        for head, theta in zip(heads, thetas):
            head.weight.copy_(theta[:, :-1])
            head.bias.copy_(theta[:, -1])
