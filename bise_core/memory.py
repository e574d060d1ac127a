"""How much memory a BISE job will need, estimated before it runs.

A job whose batch size cannot fit should be refused when it is submitted, with the field
at fault, not crash a worker an hour later. The estimate needs one number from the model:
the bytes of every intermediate tensor a forward pass creates per sample, measured once
at validation by counting the outputs of every operator (a dispatch mode sees them for
FX graphs and TorchScript alike). The rest is arithmetic on the hyperparameters and the
dataset's size.
"""

from __future__ import annotations

import math
from typing import Any

#: Training keeps every activation for the backward pass and builds a gradient of similar size.
TRAIN_FACTOR = 2.0


def activation_bytes_per_sample(module: Any, example: Any) -> int:
    """Bytes of intermediate tensors one sample's forward pass creates (an upper bound on what training keeps).

    torch is imported here, not at module level: the API uses the estimate below without torch.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class OutputBytes(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            out = func(*args, **(kwargs or {}))
            for value in tree_flatten(out)[0]:
                if isinstance(value, torch.Tensor):
                    self.total += value.numel() * value.element_size()
            return out

    counter = OutputBytes()
    with torch.no_grad(), counter:
        module(example)
    return math.ceil(counter.total / max(int(example.shape[0]), 1))


def dataset_bytes(summary: dict[str, Any]) -> int:
    """In-memory size of every split of a validated dataset (inputs as float32, labels as int64)."""
    per_sample = math.prod(summary.get("input", {}).get("shape") or [1]) * 4 + 8 * (
        1 + len(summary.get("bias_attributes") or [None]))
    return sum(int(split.get("count", 0)) for split in (summary.get("splits") or {}).values()) * per_sample


def estimate_job_bytes(*, activation_per_sample: int, params: int, batch_size: int, eval_batch_size: int,
                       train_samples: int, data_bytes: int) -> int:
    """Peak memory of a job: frozen weights, the dataset, and the larger of a training step and an evaluation batch.

    Batches larger than the training split are clipped by the loader, so they cost no more.
    """
    train_batch = min(batch_size, max(train_samples, 1))
    step = TRAIN_FACTOR * train_batch * activation_per_sample
    evaluation = min(eval_batch_size, max(train_samples, 1)) * activation_per_sample
    return int(params * 4 + data_bytes + max(step, evaluation))
