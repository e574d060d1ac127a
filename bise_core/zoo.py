"""Small reference architectures for demos, tests and benchmarks.

The engine never depends on these (it works on any archive); they exist so that the demo,
the test suite and the benchmarks can train a *vanilla* model themselves instead of
downloading one, and so each structural case (conv->BN, conv without BN, MLP, residual
network, transformer feed-forward) is exercised.
"""

from __future__ import annotations

import torch
from torch import nn


class SimpleCNN(nn.Module):
    """conv->BN->ReLU blocks, global pooling, linear classifier (the paper's SimpleConvNet shape)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, batch_norm: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = [in_channels, width, width * 2, width * 4]
        for c_in, c_out in zip(channels, channels[1:]):
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class MLP(nn.Module):
    def __init__(self, in_features: int, num_classes: int = 10, hidden: int = 128) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class TinyTransformer(nn.Module):
    """Patch embedding + one pre-norm transformer block; the FF Linear units are prunable."""

    def __init__(self, in_channels: int = 3, image_size: int = 28, num_classes: int = 10,
                 patch: int = 7, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        tokens = (image_size // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, dim * 4)
        self.ff2 = nn.Linear(dim * 4, dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        h = self.norm1(t)
        t = t + self.attn(h, h, h, need_weights=False)[0]
        t = t + self.ff2(torch.nn.functional.gelu(self.ff1(self.norm2(t))))
        return self.head(t.mean(1))


def build(arch: str, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Instantiate a reference architecture for inputs of ``input_shape`` (without batch)."""
    if arch == "cnn":
        return SimpleCNN(input_shape[0], num_classes)
    if arch == "cnn-wide":
        return SimpleCNN(input_shape[0], num_classes, width=32)
    if arch == "cnn-nobn":
        return SimpleCNN(input_shape[0], num_classes, batch_norm=False)
    if arch == "mlp":
        return MLP(int(torch.tensor(input_shape).prod()), num_classes)
    if arch == "transformer":
        return TinyTransformer(input_shape[0], input_shape[-1], num_classes)
    if arch == "resnet18":
        import torchvision

        return torchvision.models.resnet18(num_classes=num_classes)
    raise ValueError(f"unknown architecture '{arch}' ({', '.join(ARCHITECTURES)})")


ARCHITECTURES = ("cnn", "cnn-wide", "cnn-nobn", "mlp", "transformer", "resnet18")
