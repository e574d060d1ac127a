"""Job hyperparameters: one pydantic model with defaults, bounds and presets.

The same object travels from the CLI flags or the service's job row into ``loop.run``, so
bounds live here once and bad values fail before any tensor is touched (the service turns
pydantic's errors into a 422 naming the field).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Preset = Literal["fast", "paper"]

#: Values each preset sets unless the user gives them explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    # Tuned across CNN/MLP/ResNet/transformer models and several rho (see benchmarks/RESULTS.md):
    # short per-epoch annealing from small positive m, the aux head refreshed on cached z.
    # Adam on the mask: a conv gate's gradient sums over every pixel and a linear gate's does
    # not, so one SGD learning rate either freezes MLPs or collapses CNNs; Adam's per-unit
    # step does not care.
    "fast": dict(
        gamma=0.1,
        mask_optimizer="adam",
        mask_lr=0.003,
        momentum=0.9,
        weight_decay=0.0,
        mask_init=0.1,
        tau_0=1.0,
        tau_decay=0.7,
        tau_period=1,
        tau_min=1e-3,
        batch_size=128,
        aux_epochs=10,
        aux_pretrain_epochs=20,
        aux_lr=1e-2,
        aux_optimizer="adam",
        aux_cached_features=True,
        aux_max_samples=0,
        mi_estimator="entropy_ce",
        mi_samples="all",
        early_stop_periods=4,
        val_checks_per_epoch=4,
        group_balance="loss",
    ),
    # The official BISE recipe (ivanluizmatos/BISE @ 689a34d1).
    "paper": dict(
        gamma=1.0,
        mask_optimizer="sgd",
        mask_lr=1e-2,
        momentum=0.9,
        weight_decay=1e-4,
        mask_init=0.0,
        tau_0=1.0,
        tau_decay=0.5,
        tau_period=10,
        tau_min=1e-3,
        batch_size=100,
        aux_epochs=50,
        aux_pretrain_epochs=50,
        aux_lr=0.1,
        aux_optimizer="sgd",
        aux_cached_features=False,
        aux_max_samples=0,
        mi_estimator="soft_joint",
        mi_samples="conflicting",
        early_stop_periods=0,
        val_checks_per_epoch=1,
        group_balance="loss",
    ),
}


class BiseConfig(BaseModel):
    """Hyperparameters of one BISE run. ``None`` means "take it from the preset"."""

    model_config = ConfigDict(extra="forbid")

    preset: Preset = "fast"
    gamma: float | None = Field(None, ge=0.0, le=100.0, description="weight of the MI term")
    mask_optimizer: Literal["sgd", "nsgd", "adam"] | None = Field(
        None, description="optimiser of the mask parameters (nsgd: SGD on the RMS-normalised gradient)"
    )
    mask_lr: float | None = Field(None, gt=0.0, le=10.0)
    momentum: float | None = Field(None, ge=0.0, lt=1.0)
    weight_decay: float | None = Field(None, ge=0.0, le=1.0)
    mask_init: float | None = Field(None, ge=0.0, le=10.0, description="initial m_i (>= 0: every unit kept)")
    tau_0: float | None = Field(None, gt=0.0, le=100.0)
    tau_decay: float | None = Field(None, gt=0.0, lt=1.0)
    tau_period: int | None = Field(None, ge=1, le=1000, description="epochs between tau updates")
    tau_min: float | None = Field(None, gt=0.0, le=100.0)
    batch_size: int | None = Field(None, ge=1, le=65536)
    max_epochs: int = Field(400, ge=1, le=10000, description="hard cap on mask epochs")
    aux_epochs: int | None = Field(None, ge=0, le=1000, description="aux head epochs at every tau update")
    aux_pretrain_epochs: int | None = Field(None, ge=0, le=1000)
    aux_lr: float | None = Field(None, gt=0.0, le=10.0)
    aux_optimizer: Literal["adam", "sgd"] | None = None
    aux_cached_features: bool | None = None
    aux_max_samples: int | None = Field(
        None, ge=0, le=10_000_000, description=(
            "refresh the aux heads on at most this many training samples (a fixed random subset; 0: all). "
            "A head predicts b from the bottleneck: on large splits a subset fits it as well at a fraction "
            "of the forward pass that feeds it"))
    mi_estimator: Literal["entropy_ce", "soft_joint"] | None = None
    mi_samples: Literal["all", "conflicting"] | None = None
    early_stop_periods: int | None = Field(
        None, ge=0, le=1000, description="stop when the mask is unchanged this many periods (0: never)"
    )
    group_balance: Literal["loss", "sampling"] | None = Field(
        None, description="equalise (y, b) groups by loss weights or by group-balanced batch sampling"
    )
    val_checks_per_epoch: int | None = Field(
        None, ge=1, le=100, description="validation checks of the current mask per epoch (best_val selection)"
    )
    selection: Literal["best_val", "last"] | None = Field(
        None, description="best_val (default when val has >= 2 groups) or last"
    )
    bias_supervision: Literal["labels", "none"] = "labels"
    pseudo_label_rule: Literal["vanilla_correct", "vanilla_prediction"] = "vanilla_correct"
    classifier: str | None = Field(None, max_length=300, pattern=r"^[A-Za-z0-9_.\-]+$",
                                   description="name of the final linear layer (auto if unset)")
    include_layers: str | None = Field(None, max_length=300, description="regex: only prune layers whose name matches")
    exclude_layers: str | None = Field(None, max_length=300, description="regex: never prune layers whose name matches")
    finetune_epochs: int = Field(0, ge=0, le=1000, description="optional fine-tune of kept weights after extraction")
    finetune_lr: float = Field(1e-3, gt=0.0, le=10.0)
    eval_batch_size: int = Field(512, ge=1, le=65536)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: str = Field("cpu", pattern=r"^(cpu|cuda(:[0-9]{1,2})?|mps)$",
                        description="torch device (the service picks the worker's own)")
    # how the mask epochs execute (speed, not the algorithm; a resumed job may change them)
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: autocast the masked forward and the loss on CUDA (ignored on CPU)")
    channels_last: bool | None = Field(None, description=(
        "channels_last memory format for 4-D inputs; unset: used when the model has convolutions and gives "
        "the same outputs in it (checked on a batch at the start; 1.4-1.8x faster convolutions on CPU)"))
    torch_compile: bool = Field(False, description="torch.compile the masked forward (the first steps compile)")
    data_placement: Literal["auto", "host"] = Field(
        "auto", description="auto: the training split moves to the GPU once when it fits; host: batch by batch")

    @field_validator("include_layers", "exclude_layers")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            if "\x00" in value:
                raise ValueError("must not contain NUL characters")
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _fill_from_preset(self) -> "BiseConfig":
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)
        if self.tau_min >= self.tau_0:  # type: ignore[operator]
            raise ValueError("tau_min must be smaller than tau_0")
        return self

    #: Fields that change how fast a run goes, not what it computes.
    EXECUTION_FIELDS: ClassVar[frozenset[str]] = frozenset({"device", "precision", "channels_last", "torch_compile", "data_placement"})

    def schedule_epochs(self) -> int:
        """Epochs until tau drops below tau_min (bounded by max_epochs)."""
        tau, periods = float(self.tau_0), 0  # type: ignore[arg-type]
        while tau >= self.tau_min and periods < 100000:  # type: ignore[operator]
            tau *= self.tau_decay  # type: ignore[operator]
            periods += 1
        return min(periods * int(self.tau_period), self.max_epochs)  # type: ignore[arg-type]
