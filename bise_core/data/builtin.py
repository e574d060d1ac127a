"""``builtin:`` datasets: coloured-background digits with a known, tunable bias.

They exist so BISE can be demonstrated and tested offline: the bias (background colour)
is easier to learn than the digit, and its correlation with the label in ``train`` is set
by ``rho``, while ``val`` and ``test`` are unbiased, so a biased model visibly fails there.

Built from scikit-learn's shipped 8x8 digits (1797 images, no download). Any number of
samples is synthesised by random augmentation (shift, scale, stroke width, noise), in
vectorised torch code, deterministically from ``seed``.

* ``builtin:biased-digits?rho=0.99&seed=0&n=3000&size=28`` - one bias attribute, the
  background colour (``color``).
* ``builtin:multicolor-digits?rho_left=0.99&rho_right=0.95&seed=0&n=3000&size=28`` - the
  left and right halves of the background are coloured independently
  (``left_color``, ``right_color``), each agreeing with the label at its own rate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qsl

import numpy as np
import torch
import torch.nn.functional as F

from bise_core.data.splits import Dataset, build_dataset
from bise_core.errors import DatasetError

NUM_CLASSES = 10
#: Background colours, one per bias value: saturated or dark so the light stroke stays visible.
PALETTE = torch.tensor(
    [
        [0.86, 0.08, 0.08],  # red
        [0.08, 0.62, 0.12],  # green
        [0.10, 0.20, 0.86],  # blue
        [0.85, 0.72, 0.00],  # yellow
        [0.78, 0.10, 0.78],  # magenta
        [0.00, 0.60, 0.62],  # teal
        [0.95, 0.45, 0.00],  # orange
        [0.42, 0.08, 0.62],  # purple
        [0.45, 0.27, 0.07],  # brown
        [0.22, 0.22, 0.22],  # charcoal
    ]
)
UNBIASED_RHO = 1.0 / NUM_CLASSES  # b == y at chance: b uniform over all colours
TRAIN_SOURCE_FRACTION = 0.7  # of the 1797 shipped digits; the rest only feed ``test``
DIGIT_FILL = 0.75  # the digit spans ~3/4 of the frame, like MNIST's 20 px in 28
MAX_SHIFT_AT_28 = 2.0
SCALE_RANGE = (0.85, 1.15)
STROKE_PROB = 0.25  # each of dilate and erode
NOISE_STD = 0.03
CHUNK = 8192  # samples rendered at once, bounds temporary memory
MAX_BYTES = 16 * 2**30  # refuse generating more than this much float32 image data


# --------------------------------------------------------------------------- query parameters


@dataclass(frozen=True)
class Param:
    """One query parameter: its type, default and the rule it must satisfy."""

    kind: type
    default: float
    valid: Callable[[float], bool]
    rule: str


def _rho(default: float) -> Param:
    return Param(float, default, lambda v: 0.0 < v <= 1.0, "in (0, 1]")


COMMON_PARAMS = {
    "seed": Param(int, 0, lambda v: 0 <= v < 2**63, ">= 0"),
    "n": Param(int, 3000, lambda v: v >= 100, ">= 100"),
    "size": Param(int, 28, lambda v: 8 <= v <= 224, "between 8 and 224"),
}


@dataclass(frozen=True)
class Builtin:
    """A generator: its parameters, and which ``rho`` parameter drives each bias attribute.

    Bias attribute j colours the j-th vertical band of the background, so one attribute is
    the whole background and two are its left and right halves.
    """

    params: dict[str, Param]
    rho_params: tuple[str, ...]
    bias_names: tuple[str, ...]


BUILTINS = {
    "biased-digits": Builtin({**COMMON_PARAMS, "rho": _rho(0.99)}, ("rho",), ("color",)),
    "multicolor-digits": Builtin(
        {**COMMON_PARAMS, "rho_left": _rho(0.99), "rho_right": _rho(0.95)},
        ("rho_left", "rho_right"),
        ("left_color", "right_color"),
    ),
}


def _parse_value(name: str, text: str, param: Param) -> float:
    try:
        value = param.kind(text)
    except ValueError:
        kind = "an integer" if param.kind is int else "a number"
        raise DatasetError(f"parameter '{name}' must be {kind}, got '{text}'") from None
    if not param.valid(value):
        raise DatasetError(f"parameter '{name}' must be {param.rule}, got {text}")
    return value


def parse_query(name: str, query: str) -> dict[str, float]:
    """Validate a ``builtin:`` query string against the generator's parameters, naming any bad one."""
    spec = BUILTINS[name]
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise DatasetError(f"cannot parse the query of builtin:{name}: {exc}") from exc
    values = {key: param.kind(param.default) for key, param in spec.params.items()}
    seen: set[str] = set()
    for key, text in pairs:
        if key not in spec.params:
            allowed = ", ".join(sorted(spec.params))
            raise DatasetError(f"unknown parameter '{key}' for builtin:{name} (allowed: {allowed})")
        if key in seen:
            raise DatasetError(f"parameter '{key}' is given twice")
        seen.add(key)
        values[key] = _parse_value(key, text, spec.params[key])
    return values


# --------------------------------------------------------------------------- sampling


@lru_cache(maxsize=1)
def _shipped_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 8x8 digits as [1797, 1, 8, 8] intensities in [0, 1] and their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    return images, torch.from_numpy(digits.target.astype(np.int64))


def _generator(seed: int, stream: int) -> torch.Generator:
    """Independent, reproducible streams per split, so one split's size never shifts another's draws."""
    state = np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _source_pools(labels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the shipped digits per class into train-source and test-source images, disjointly,
    so test accuracy is measured on handwriting the model never saw."""
    gen = _generator(seed, 0)
    train, test = [], []
    for digit in range(NUM_CLASSES):
        members = torch.nonzero(labels == digit).flatten()
        members = members[torch.randperm(members.numel(), generator=gen)]
        cut = int(round(TRAIN_SOURCE_FRACTION * members.numel()))
        train.append(members[:cut])
        test.append(members[cut:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def _bias_labels(y: torch.Tensor, rho: float, gen: torch.Generator) -> torch.Tensor:
    """b = y with probability rho, else uniform over the other classes."""
    agree = torch.rand(y.shape, generator=gen) < rho
    other = (y + torch.randint(1, NUM_CLASSES, y.shape, generator=gen)) % NUM_CLASSES
    return torch.where(agree, y, other)


@dataclass
class Augmentation:
    """Per-sample random draws, all taken up front so chunking cannot change the result."""

    scale: torch.Tensor  # [n]
    shift: torch.Tensor  # [n, 2], in normalised [-1, 1] coordinates
    stroke: torch.Tensor  # [n] uniform draw: < p dilate, > 1 - p erode
    ink: torch.Tensor  # [n] brightness of the stroke

    @classmethod
    def draw(cls, count: int, size: int, gen: torch.Generator) -> Augmentation:
        low, high = SCALE_RANGE
        max_shift = MAX_SHIFT_AT_28 * size / 28.0 * 2.0 / size  # pixels -> normalised units
        return cls(
            scale=low + (high - low) * torch.rand(count, generator=gen),
            shift=(torch.rand(count, 2, generator=gen) * 2.0 - 1.0) * max_shift,
            stroke=torch.rand(count, generator=gen),
            ink=0.85 + 0.15 * torch.rand(count, generator=gen),
        )

    def rows(self, part: slice) -> Augmentation:
        return Augmentation(self.scale[part], self.shift[part], self.stroke[part], self.ink[part])


def _axis_weights(zoom: torch.Tensor, shift: torch.Tensor, size: int, source: int) -> torch.Tensor:
    """Bilinear weights [n, size, source] mapping source pixels to output pixels along one axis.

    Scale-and-shift warps are separable, so upscaling plus augmentation is two small batched
    matmuls (the same result as ``affine_grid`` + ``grid_sample`` with zero padding, ~10x faster).
    """
    out = (2.0 * torch.arange(size) + 1.0) / size - 1.0  # output pixel centres, [-1, 1]
    inp = zoom[:, None] * (out[None, :] - shift[:, None])  # where each one samples the source
    pos = ((inp + 1.0) * source - 1.0) / 2.0  # in source pixel units
    return (1.0 - (pos[:, :, None] - torch.arange(source)[None, None, :]).abs()).clamp_(min=0.0)


def _pool_some(mask: torch.Tensor, pick: torch.Tensor, kernel: int, sign: float) -> None:
    """Max-pool (sign=1, dilate) or min-pool (sign=-1, erode) only the picked samples, in place."""
    rows = torch.nonzero(pick).flatten()
    if rows.numel():
        mask[rows] = sign * F.max_pool2d(sign * mask[rows], kernel, stride=1, padding=kernel // 2)


def _stroke_masks(sources: torch.Tensor, aug: Augmentation, size: int) -> torch.Tensor:
    """Upscale 8x8 digits to [n, 1, size, size] (bilinear) through a random scale and shift,
    then thicken or thin some strokes with a max / min pool."""
    zoom = 1.0 / (DIGIT_FILL * aug.scale)
    source = sources.shape[-1]
    rows = _axis_weights(zoom, aug.shift[:, 1], size, source)
    cols = _axis_weights(zoom, aug.shift[:, 0], size, source)
    mask = torch.bmm(torch.bmm(rows, sources[:, 0]), cols.transpose(1, 2))[:, None]
    mask = ((mask - 0.15) / 0.55).clamp_(0.0, 1.0)  # crisper strokes than a plain blurry upscale
    kernel = 2 * max(1, round(size / 28)) + 1
    _pool_some(mask, aug.stroke < STROKE_PROB, kernel, 1.0)
    _pool_some(mask, aug.stroke > 1.0 - STROKE_PROB, kernel, -1.0)
    return mask


def _backgrounds(b: torch.Tensor, size: int) -> torch.Tensor:
    """[n, 3, size, size]: bias attribute j paints the j-th vertical band in PALETTE[b[:, j]]."""
    k = b.shape[1]
    band = torch.div(torch.arange(size) * k, size, rounding_mode="floor")  # column -> attribute
    colours = PALETTE[b]  # [n, k, 3]
    return colours[:, band, :].permute(0, 2, 1)[:, :, None, :].expand(-1, -1, size, -1)


def _render(
    sources: torch.Tensor, b: torch.Tensor, aug: Augmentation, size: int, gen: torch.Generator
) -> torch.Tensor:
    """Compose light strokes over coloured backgrounds, chunk by chunk, into [n, 3, size, size]."""
    count = b.shape[0]
    out = torch.empty(count, 3, size, size)
    for start in range(0, count, CHUNK):
        part = slice(start, min(start + CHUNK, count))
        mask = _stroke_masks(sources[part], aug.rows(part), size)
        ink = aug.ink[part].view(-1, 1, 1, 1)
        image = torch.lerp(_backgrounds(b[part], size), ink.expand(-1, 3, size, size), mask)
        image += torch.rand(image.shape, generator=gen).sub_(0.5).mul_(NOISE_STD * 12**0.5)  # uniform, std NOISE_STD
        out[part] = image.clamp_(0.0, 1.0)
    return out


def _sample_split(
    pool: torch.Tensor, count: int, rhos: list[float], size: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw ``count`` augmented digits from the pool with one colour attribute per rho."""
    images, labels = _shipped_digits()
    index = pool[torch.randint(pool.numel(), (count,), generator=gen)]
    y = labels[index]
    b = torch.stack([_bias_labels(y, rho, gen) for rho in rhos], dim=1)
    aug = Augmentation.draw(count, size, gen)
    return _render(images[index], b, aug, size, gen), y, b


def split_sizes(n: int) -> dict[str, int]:
    """train n, val n//5 (at least 200), test n//2 (at least 500)."""
    return {"train": n, "val": max(n // 5, 200), "test": max(n // 2, 500)}


def _check_memory(sizes: dict[str, int], size: int) -> None:
    needed = sum(sizes.values()) * 3 * size * size * 4
    if needed > MAX_BYTES:
        raise DatasetError(f"n and size would need {needed / 2**30:.1f} GiB of images; lower n or size")


def load_builtin(spec: str, *, source: str | None = None) -> Dataset:
    """Generate ``NAME?query`` (the part after ``builtin:``) as a :class:`Dataset`."""
    name, _, query = spec.partition("?")
    if name not in BUILTINS:
        raise DatasetError(f"unknown builtin dataset '{name}' (available: {', '.join(sorted(BUILTINS))})")
    builtin = BUILTINS[name]
    values = parse_query(name, query)
    seed, n, size = int(values["seed"]), int(values["n"]), int(values["size"])
    sizes = split_sizes(n)
    _check_memory(sizes, size)
    _, labels = _shipped_digits()
    train_pool, test_pool = _source_pools(labels, seed)
    biased = [float(values[p]) for p in builtin.rho_params]
    unbiased = [UNBIASED_RHO] * len(biased)
    plan = {"train": (train_pool, biased), "val": (train_pool, unbiased), "test": (test_pool, unbiased)}
    raw = {
        split: _sample_split(pool, sizes[split], rhos, size, _generator(seed, stream))
        for stream, (split, (pool, rhos)) in enumerate(plan.items(), start=1)
    }
    return build_dataset(
        raw, source=source or f"builtin:{spec}", bias_names=list(builtin.bias_names), num_classes=NUM_CLASSES
    )
