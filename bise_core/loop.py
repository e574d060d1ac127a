"""The BISE optimisation loop: tau schedule, mask/aux alternation, validation selection.

Only the gates' m and the auxiliary heads are trained; the network stays frozen. Every tau
period ends with (1) the aux heads refreshed on the current pruned bottleneck, and (2) the
validation unbiased accuracy of the current hard mask, so the best mask can be kept and a
mask that is worse than the dense model is never returned silently.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from bise_core.checkpoint import Checkpointer, CheckpointUnreadable
from bise_core.config import BiseConfig
from bise_core.data.splits import Dataset, Split
from bise_core.evaluate import predict, unbiased_accuracy
from bise_core.gates import GateControls
from bise_core.execution import Execution
from bise_core.objective import AuxHeads, Objective, group_weights, train_heads
from bise_core.staging import stage

ProgressCallback = Callable[[dict[str, Any]], None]
StopCheck = Callable[[], bool]


class Cancelled(Exception):
    """Raised between steps when the caller asked to stop (cooperative cancel)."""


@dataclass
class LoopResult:
    masks: list[torch.Tensor]
    history: list[dict[str, Any]]
    selection: dict[str, Any]
    epochs_run: int
    seconds: float


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _has_two_groups(split: Split | None) -> bool:
    if split is None or len(split) == 0:
        return False
    keys = torch.cat([split.y[:, None], split.b], dim=1)
    return len(torch.unique(keys, dim=0)) >= 2


def _aux_rows(n: int, limit: int, seed: int) -> torch.Tensor | None:
    """The training rows the aux heads learn from: all (None) or a fixed random subset.

    Drawn from its own generator, so that runs on splits under the limit draw exactly the
    random numbers they drew before the limit existed, and a resumed run gets the same rows.
    """
    if limit <= 0 or n <= limit:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed + 7919))[:limit].sort().values


def _mask_optimizer(cfg: BiseConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """SGD (the paper's) or Adam, whose per-unit step size does not depend on how large a
    layer's gradients are (a conv gate sums over every pixel, a linear gate does not)."""
    lr, wd = float(cfg.mask_lr), float(cfg.weight_decay)  # type: ignore[arg-type]
    if cfg.mask_optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(float(cfg.momentum), 0.999), weight_decay=wd)  # type: ignore[arg-type]
    return torch.optim.SGD(params, lr=lr, momentum=float(cfg.momentum), weight_decay=wd)  # type: ignore[arg-type]


def _normalise_gradients(params: list[torch.nn.Parameter]) -> None:
    """Divide every mask gradient by their common RMS: the step size no longer depends on the
    model's gradient scale, while the *ranking* of units (who is pruned first) is kept."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    rms = torch.sqrt(torch.cat([g.flatten() for g in grads]).pow(2).mean()).clamp_min(1e-12)
    for g in grads:
        g.div_(rms)


class BiseLoop:
    """One run of BISE on a gated model. Construct, then call :meth:`run`."""

    def __init__(
        self,
        config: BiseConfig,
        gated: GateControls,
        data: Dataset,
        on_progress: ProgressCallback | None = None,
        should_stop: StopCheck | None = None,
        checkpoint: Checkpointer | None = None,
    ) -> None:
        self.cfg = config
        self.checkpoint = checkpoint
        self.gated = gated.to(config.device)  # type: ignore[attr-defined]
        self.data = data
        self.train = data.splits["train"]
        self.val = data.splits.get("val")
        self.on_progress = on_progress or (lambda event: None)
        self.should_stop = should_stop or (lambda: False)
        self.gen = seed_everything(config.seed)
        self.device = config.device
        self._feature_memo: tuple[tuple[bytes, ...], torch.Tensor] | None = None
        self.aux_rows = _aux_rows(len(self.train), int(config.aux_max_samples or 0), int(config.seed))
        self._val_memo: tuple[tuple[bytes, ...], float] | None = None
        self.weights = group_weights(self.train.y, self.train.b)
        sampled = config.group_balance == "sampling"
        self.batch_weights = torch.ones_like(self.weights) if sampled else self.weights
        self.objective = Objective(
            self.train,
            data.num_classes,
            data.bias_cardinalities,
            gamma=float(config.gamma),  # type: ignore[arg-type]
            estimator=str(config.mi_estimator),
            samples=str(config.mi_samples),
        )
        z_dim = self._features().shape[1]
        self.heads = AuxHeads(z_dim, data.bias_cardinalities).to(self.device)
        self.heads.requires_grad_(False)  # trained only inside _refresh_heads
        self.optimizer = _mask_optimizer(config, gated.mask_parameters())
        self.staged = stage(self.train.x, self.train.y, self.train.b, self.batch_weights, self.device,
                            config.data_placement)
        self.execution = Execution.for_config(config, self.gated, self.train.x[:8].to(self.device))
        selection = config.selection or ("best_val" if _has_two_groups(self.val) else "last")
        if selection == "best_val" and not _has_two_groups(self.val):
            selection = "last"
        self.selection_mode = selection
        self.checks_per_epoch = int(config.val_checks_per_epoch) if selection == "best_val" else 1  # type: ignore[arg-type]
        self.period = 0
        self.best: dict[str, Any] = {}

    # -- pieces -------------------------------------------------------------------------
    def _hard_mask_key(self) -> tuple[bytes, ...]:
        return tuple(m.numpy().tobytes() for m in self.gated.keep_masks())

    def _features(self) -> torch.Tensor:
        """Bottleneck features of the training split under the current hard mask.

        A hard-mode forward depends on the binary mask alone, and late in a run the mask
        stops changing for whole periods: the last result is reused while the mask is the
        same (exactly what a new pass would give, without the pass over the whole split).
        """
        self.gated.set_mode("hard")
        key = self._hard_mask_key()
        if self._feature_memo is None or self._feature_memo[0] != key:
            x = self.train.x if self.aux_rows is None else self.train.x[self.aux_rows]
            _, z = predict(self.gated, x, self.cfg.eval_batch_size, self.device)
            self._feature_memo = (key, z.to(self.device))
        return self._feature_memo[1]

    def _refresh_heads(self, epochs: int) -> None:
        """Retrain the aux heads to predict b from the *current* pruned bottleneck."""
        if epochs <= 0:
            return
        b = (self.train.b if self.aux_rows is None else self.train.b[self.aux_rows]).to(self.device)
        kwargs = dict(lr=float(self.cfg.aux_lr), optimizer=str(self.cfg.aux_optimizer),  # type: ignore[arg-type]
                      batch_size=int(self.cfg.batch_size), generator=self.gen)  # type: ignore[arg-type]
        self.heads.requires_grad_(True)
        if self.cfg.aux_cached_features:
            train_heads(self.heads, self._features(), b, epochs=epochs, **kwargs)  # type: ignore[arg-type]
        else:  # the paper's way: a fresh pass through the network for every head epoch
            for _ in range(epochs):
                train_heads(self.heads, self._features(), b, epochs=1, **kwargs)  # type: ignore[arg-type]
        self.heads.requires_grad_(False)

    def _val_score(self) -> float | None:
        """Val unbiased accuracy of the current hard mask (memoised per mask, like _features)."""
        if self.val is None or not _has_two_groups(self.val):
            return None
        self.gated.set_mode("hard")
        key = self._hard_mask_key()
        if self._val_memo is None or self._val_memo[0] != key:
            self._val_memo = (key, unbiased_accuracy(self.gated, self.val, self.cfg.eval_batch_size, self.device))
        return self._val_memo[1]

    def _mask_epoch(self, epoch: int, tau: float, step0: int, total_steps: int) -> dict[str, float]:
        self.gated.set_mode("soft")
        self.gated.set_tau(tau)
        n, bs = len(self.train), int(self.cfg.batch_size)  # type: ignore[arg-type]
        if self.cfg.group_balance == "sampling":
            # Same expected loss as reweighting, but every batch is group-balanced: rare
            # bias-conflicting samples are seen often instead of weighted 20x once in a while.
            order = torch.multinomial(self.weights, n, replacement=True, generator=self.gen)
        else:
            order = torch.randperm(n, generator=self.gen)
        sums = {"loss": 0.0, "ce": 0.0, "mi": 0.0}
        batches = 0
        steps = -(-n // bs)
        checks = {round(steps * k / self.checks_per_epoch) for k in range(1, self.checks_per_epoch)}
        for start in range(0, n, bs):
            if self.should_stop():
                raise Cancelled()
            x, y, b, w = self.staged.batch(order[start : start + bs], self.device)
            with self.execution.autocast():
                logits, z = self.execution.forward(self.execution.layout(x))
            loss, parts = self.objective.loss(logits.float(), self.heads(z.float()), y, b, w)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.mask_optimizer == "nsgd":
                _normalise_gradients(self.gated.mask_parameters())
            self.optimizer.step()
            batches += 1
            for key in sums:
                sums[key] += parts[key]
            self.on_progress(
                {"type": "step", "epoch": epoch, "step": step0 + batches, "total_steps": total_steps,
                 "tau": tau, **parts, "units_kept": self.gated.units_kept(),
                 "units_total": self.gated.units.total_units}
            )
            if batches in checks:
                self._consider(epoch + batches / steps)
                self.gated.set_mode("soft")
        return {k: v / max(batches, 1) for k, v in sums.items()}

    def _consider(self, epoch: float) -> float | None:
        """Score the current hard mask on val and keep it if it is the best so far.

        Checked several times per epoch: masks move in jumps, and the best subnetwork is
        often passed between two period ends."""
        if self.selection_mode != "best_val":
            return None
        score = self._val_score()
        if score is not None and (self.best["score"] is None or score > self.best["score"]):
            self.best = {"masks": self.gated.keep_masks(), "score": score, "period": self.period + 1,
                         "epoch": round(epoch, 3), "dense": False}
        return score

    # -- checkpoints --------------------------------------------------------------------
    def _fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed here: the same job, whatever the device."""
        return {"config": self.cfg.model_dump(exclude=set(BiseConfig.EXECUTION_FIELDS)),
                "units": [[u.name, u.size] for u in self.gated.units.units],
                "train_size": len(self.train), "bias_cardinalities": list(self.data.bias_cardinalities),
                "selection": self.selection_mode}

    def _tensors_and_rng(self) -> dict[str, Any]:
        """The trained tensors and RNG states (copies: safe to keep while training goes on)."""
        return {
            "masks": [p.detach().cpu().clone() for p in self.gated.mask_parameters()],
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "heads": {k: v.detach().cpu().clone() for k, v in self.heads.state_dict().items()},
            "generator": self.gen.get_state(), "torch_rng": torch.get_rng_state(),
        }

    def _load_tensors_and_rng(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for param, value in zip(self.gated.mask_parameters(), state["masks"], strict=True):
                param.copy_(value.to(param.device))
        self.optimizer.load_state_dict(state["optimizer"])
        self.heads.load_state_dict(state["heads"])
        self.gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])

    def _snapshot(self, run: "_RunState") -> dict[str, Any]:
        """Everything a resumed run needs to continue exactly as this one would have."""
        state: dict[str, Any] = {"version": CHECKPOINT_VERSION, "epoch": run.epoch, "fingerprint": self._fingerprint(),
                                 "run": run.as_dict(), "best": self.best, "period": self.period,
                                 **self._tensors_and_rng()}
        if str(self.device).startswith("cuda"):  # nothing in the loop draws from it; kept for completeness
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _restore(self, state: dict[str, Any]) -> "_RunState":
        """Continue from ``state``, or raise :class:`CheckpointUnreadable` leaving the loop untouched."""
        if state.get("version") != CHECKPOINT_VERSION:
            raise CheckpointUnreadable(f"checkpoint format {state.get('version')!r}, expected {CHECKPOINT_VERSION}")
        if state.get("fingerprint") != self._fingerprint():
            raise CheckpointUnreadable("the checkpoint belongs to another job (model, data or hyperparameters differ)")
        fresh = self._tensors_and_rng()
        try:
            run = _RunState(**state["run"])
            best, period = dict(state["best"]), int(state["period"])
            self._load_tensors_and_rng(state)
        except Exception as exc:  # missing key, wrong shape, ...: a damaged file, not a bug here
            self._load_tensors_and_rng(fresh)
            raise CheckpointUnreadable(f"the checkpoint is incomplete ({type(exc).__name__}: {exc})") from exc
        cuda_rng = state.get("cuda_rng")
        if cuda_rng is not None and str(self.device).startswith("cuda") and len(cuda_rng) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_rng)
        self.best, self.period = best, period
        return run

    def _save_checkpoint(self, run: "_RunState") -> None:
        """Checkpoints only make a restart cheaper: failing to write one must not fail the job."""
        if self.checkpoint is None:
            return
        try:
            self.checkpoint.save(self._snapshot(run))
        except Exception as exc:
            self.on_progress({"type": "checkpoint_failed", "epoch": run.epoch,
                              "reason": f"{type(exc).__name__}: {exc}"[:500]})

    def _resume_or_start(self) -> "_RunState":
        if self.checkpoint is not None:
            try:
                state = self.checkpoint.load()
                if state is not None:
                    run = self._restore(state)
                    self.on_progress({"type": "resumed", "epoch": run.epoch, "period": self.period})
                    return run
            except CheckpointUnreadable as exc:
                # The checkpoint is our own file, not user input, and a run is deterministic:
                # starting over costs time but gives the same result; failing the job would not.
                self.on_progress({"type": "checkpoint_unreadable", "epoch": 0, "reason": str(exc)})
        self.gated.set_mode("dense")
        dense_val = self._val_score()
        self.gated.set_mode("soft")
        self._refresh_heads(int(self.cfg.aux_pretrain_epochs))  # type: ignore[arg-type]
        all_kept = [torch.ones(g.m.shape[0], dtype=torch.bool) for g in self.gated.gates]
        self.best = {"masks": all_kept, "score": dense_val, "period": 0, "epoch": 0, "dense": True}
        return _RunState(tau=float(self.cfg.tau_0), epoch=0, unchanged=0,  # type: ignore[arg-type]
                         previous=self.gated.keep_masks(), history=[], dense_val=dense_val)

    # -- the loop -----------------------------------------------------------------------
    def _end_of_period(self, run: "_RunState", parts: dict[str, float]) -> None:
        """Score, decay tau, refresh the heads, record, and update the early-stop counter."""
        cfg = self.cfg
        current = self.gated.keep_masks()
        score = self._consider(run.epoch) if self.selection_mode == "best_val" else self._val_score()
        self.period += 1
        run.tau *= float(cfg.tau_decay)  # type: ignore[arg-type]
        self._refresh_heads(int(cfg.aux_epochs))  # type: ignore[arg-type]
        record = {"period": self.period, "epoch": run.epoch, "tau": run.tau, **parts,
                  "units_kept": int(sum(int(m.sum()) for m in current)),
                  "units_total": self.gated.units.total_units, "val_unbiased_accuracy": score}
        run.history.append(record)
        self.on_progress({"type": "period", **record})
        same = all(torch.equal(a, b) for a, b in zip(run.previous, current))
        # Unchanged periods only count once pruning has begun: from a small positive m
        # the first periods legitimately move no gate.
        begun = any(not bool(m.all()) for m in current)
        run.unchanged = run.unchanged + 1 if same and begun else 0
        run.previous = current
        if cfg.early_stop_periods and run.unchanged >= int(cfg.early_stop_periods):  # type: ignore[arg-type]
            run.early_stopped = True

    def run(self) -> LoopResult:
        started = time.perf_counter()
        cfg = self.cfg
        total_epochs = cfg.schedule_epochs()
        steps_per_epoch = -(-len(self.train) // int(cfg.batch_size))  # type: ignore[arg-type]
        total_steps = total_epochs * steps_per_epoch
        run = self._resume_or_start()
        while not run.early_stopped and run.tau >= float(cfg.tau_min) and run.epoch < total_epochs:  # type: ignore[arg-type]
            parts = self._mask_epoch(run.epoch, run.tau, run.epoch * steps_per_epoch, total_steps)
            run.epoch += 1
            if run.epoch % int(cfg.tau_period) == 0 or run.epoch >= total_epochs:  # type: ignore[arg-type]
                self._end_of_period(run, parts)
            self._save_checkpoint(run)
        masks, selection = self._selected_masks(run)
        return LoopResult(masks=[m.clone() for m in masks], history=run.history, selection=selection,
                          epochs_run=run.epoch, seconds=time.perf_counter() - started)

    def _selected_masks(self, run: "_RunState") -> tuple[list[torch.Tensor], dict[str, Any]]:
        history, dense_val = run.history, run.dense_val
        if self.selection_mode == "best_val":
            best = self.best
            reason = (
                "no period beat the dense model on val unbiased accuracy; the dense mask is kept"
                if best["dense"]
                else f"the mask at epoch {best['epoch']} (tau period {best['period']}) had the best "
                "val unbiased accuracy"
            )
            masks = best["masks"]
            selection = {"mode": "best_val", "period": best["period"], "epoch": best["epoch"],
                         "val_unbiased_accuracy": best["score"], "dense_val_unbiased_accuracy": dense_val,
                         "reason": reason}
        else:
            masks = self.gated.keep_masks()
            selection = {"mode": "last", "period": self.period, "epoch": run.epoch,
                         "val_unbiased_accuracy": history[-1]["val_unbiased_accuracy"] if history else None,
                         "dense_val_unbiased_accuracy": dense_val,
                         "reason": "final mask of the schedule (no val split with two or more groups)"
                         if self.val is None or not _has_two_groups(self.val) else "selection=last requested"}
        selection["early_stopped"] = run.early_stopped
        return masks, selection


CHECKPOINT_VERSION = 2


@dataclass
class _RunState:
    """Where the schedule is: what a checkpoint carries besides tensors and RNG states."""

    tau: float
    epoch: int
    unchanged: int
    previous: list[torch.Tensor]
    history: list[dict[str, Any]]
    dense_val: float | None
    early_stopped: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "epoch": self.epoch, "unchanged": self.unchanged, "previous": self.previous,
                "history": self.history, "dense_val": self.dense_val, "early_stopped": self.early_stopped}
