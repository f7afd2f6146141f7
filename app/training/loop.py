"""The training loop: one readable pass over index slices of a per-epoch permutation.

Speed rules (measured in bench/): data stays on the device; a batch is
``x[perm[i:i+b]]``; per-step losses go into a preallocated device tensor and
reach the host once per epoch; nothing that can be done per epoch is done per
batch. Everything the run depends on (weights, optimizer, schedule, early
stopping, RNG states, position in the epoch) is in the checkpoint, so a resumed
run ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sklearn
import torch
from torch import nn

from app import spec as s
from app.training import checkpoint as ckpt
from app.training.data import Prepared
from app.training.losses import build_loss
from app.training.metrics import confusion_matrix, evaluate, macro_f1, predict
from app.training.models import build_model, count_parameters
from app.training.optim import LrSchedule, build_optimizer, decayed_parameters, set_lr
from app.training.regularize import (
    EarlyStopper,
    WeightNoise,
    add_input_noise,
    cutmix,
    mixup,
    penalty,
    shift_and_flip,
)
from app.training.shapes import eval_chunk_rows, output_dim
from app.training.sink import EpochReport, Metrics, Sink


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where and what to change."""


@dataclass
class Outcome:
    status: str  # "completed" or "stopped"
    reason: str | None = None  # why it stopped: cancelled, preempted, timeout
    summary: dict[str, Any] = field(default_factory=dict)
    checkpoint: bytes | None = None  # state at the stop, to resume from


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("training.device is 'cuda' but this worker has no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def default_monitor(has_val: bool) -> str:
    return "val_loss" if has_val else "train_loss"


def flatten(metrics: Metrics) -> dict[str, float]:
    return {f"{split}_{name}": v for split, values in metrics.items() for name, v in values.items()}


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


class Trainer:
    """Trains one spec on prepared data, reporting to a sink."""

    def __init__(self, spec: s.JobSpec, data: Prepared, sink: Sink, device: torch.device) -> None:
        self.spec, self.data, self.sink, self.device = spec, data, sink, device
        reg, tr = spec.regularization, spec.training
        torch.manual_seed(tr.seed)
        self.gen = torch.Generator(device=device)
        self.gen.manual_seed(tr.seed + 1)
        self.np_rng = np.random.default_rng(tr.seed + 2)
        n_out = output_dim(data.info, spec.loss)
        self.binary_logit = spec.loss.kind == "bce"
        self.model = build_model(spec.model, data.input_shape, n_out).to(device)
        self.loss_fn = build_loss(spec.loss, data.info.n_classes, device)
        self.optimizer = build_optimizer(spec.optimizer, self.model)
        self.schedule = LrSchedule(spec.schedule, spec.optimizer.lr, tr.epochs)
        self.decayed = decayed_parameters(self.model, spec.optimizer.decay_all_parameters)
        self.weight_noise = (WeightNoise(self.decayed, reg.weight_noise, self.gen)
                             if reg.weight_noise > 0 else None)
        es = reg.early_stopping
        self.can_stop_early = es is not None
        self.tracker = EarlyStopper(es or s.EarlyStopping.model_construct(
            monitor=default_monitor(data.has_val), mode="auto", patience=10**9,
            min_delta=0.0, restore_best=False))
        self.restore_best = es is not None and es.restore_best
        self.best_weights: dict[str, torch.Tensor] | None = None
        self._plan_batches()
        self.epoch, self.step = 0, 0  # completed epochs; next step inside the current epoch
        self.perm: torch.Tensor | None = None
        self.stopped_early_at: int | None = None
        self.pruned: dict[str, Any] | None = None  # {"epoch", "reason"} when the sink ended it
        self.autocast: Callable[[], Any] = (
            (lambda: torch.autocast(device.type, dtype=torch.bfloat16))
            if tr.precision == "bf16" else contextlib.nullcontext)
        set_lr(self.optimizer, self.schedule.lr(0))

    # ------------------------------------------------------------------ set-up

    def _plan_batches(self) -> None:
        n = self.data.x_train.shape[0]
        bs = self.spec.training.batch_size
        self.batch_size = n if bs == "full" else min(int(bs), n)
        self.steps = math.ceil(n / self.batch_size)
        if has_batch_norm(self.model) and n % self.batch_size == 1 and self.steps > 1:
            self.steps -= 1  # batch norm cannot normalize a lone leftover row: skip it
        if has_batch_norm(self.model) and self.batch_size == 1:
            raise ValueError("batch norm needs batch_size >= 2")
        self.rows_per_epoch = min(n, self.steps * self.batch_size)
        n_out = output_dim(self.data.info, self.spec.loss)  # eval within a training step's memory
        self.eval_rows = eval_chunk_rows(self.spec, self.data.input_shape, n_out, self.batch_size)

    # ------------------------------------------------------------------- run

    def run(self, resume: bytes | None = None) -> Outcome:
        if resume is not None:
            self.load(resume)
        total = self.spec.training.epochs
        while self.epoch < total and self.stopped_early_at is None:  # (a resumed run may be done)
            reason = self.train_epoch()
            if reason is not None:
                return Outcome("stopped", reason, checkpoint=self.pack())
            if self.end_epoch():
                break
        return Outcome("completed", summary=self.finish())

    def train_epoch(self) -> str | None:
        """One pass over the training rows; returns a stop reason if asked to stop."""
        x, y = self.data.x_train, self.data.y_train
        if self.perm is None:
            self.perm = torch.randperm(x.shape[0], generator=self.gen, device=self.device)
            self.step_loss = torch.zeros(self.steps, device=self.device)
            self.step_correct = torch.zeros(self.steps, device=self.device)
            self.epoch_started = time.perf_counter()
        self.model.train()
        bs, perm, per_step_lr = self.batch_size, self.perm, self.schedule.per_step
        classify = self.data.info.task == "classification"
        for step in range(self.step, self.steps):
            if (reason := self.sink.should_stop()) is not None:
                self.step = step
                return reason
            if per_step_lr:
                set_lr(self.optimizer, self.schedule.lr(self.epoch, (step + 1) / self.steps))
            idx = perm[step * bs : (step + 1) * bs]
            out, yb, loss = self.train_step(x[idx], y[idx])
            self.step_loss[step] = loss
            if classify:
                self.step_correct[step] = self._correct(out, yb)
        self.train_seconds = time.perf_counter() - self.epoch_started
        return None

    def _correct(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = (out.squeeze(1) > 0).long() if self.binary_logit else out.argmax(dim=1)
        return (pred == y).sum()

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
        """Forward, backward, step. Returns (output, primary targets, data loss)."""
        reg = self.spec.regularization
        xb = self._augment(xb)
        mix_lam, partner = 1.0, None
        if reg.mixup is not None or reg.cutmix is not None:
            xb, mix_lam, partner = self._mix(xb)
        if self.weight_noise is not None:
            self.weight_noise.add()
        with self.autocast():
            out = self.model(xb)
        out = out.float()
        loss = self._data_loss(out, yb, mix_lam, partner)
        extra = penalty(self.decayed, reg.l1, reg.l2)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if extra is None else loss + extra).backward()  # type: ignore[no-untyped-call]
        if self.weight_noise is not None:
            self.weight_noise.remove()
        if self.spec.training.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.training.grad_clip_norm)
        self.optimizer.step()
        return out, yb, loss.detach()

    def _augment(self, xb: torch.Tensor) -> torch.Tensor:
        reg = self.spec.regularization
        if reg.augment is not None:
            xb = shift_and_flip(xb, self.data.input_shape, reg.augment, self.gen)
        if reg.input_noise > 0:
            xb = add_input_noise(xb, reg.input_noise, self.gen)
        return xb

    def _mix(self, xb: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        reg = self.spec.regularization
        alpha = (reg.mixup or reg.cutmix).alpha  # type: ignore[union-attr]
        lam = float(self.np_rng.beta(alpha, alpha))
        partner = torch.randperm(xb.shape[0], generator=self.gen, device=self.device)
        if reg.mixup is not None:
            return mixup(xb, lam, partner), lam, partner
        mixed, kept = cutmix(xb, self.data.input_shape, lam, partner, self.np_rng)
        return mixed, kept, partner

    def _data_loss(self, out: torch.Tensor, yb: torch.Tensor, lam: float,
                   partner: torch.Tensor | None) -> torch.Tensor:
        if partner is None:
            return self.loss_fn(out, yb)
        if self.data.info.task == "regression":
            return self.loss_fn(out, lam * yb + (1 - lam) * yb[partner])
        return lam * self.loss_fn(out, yb) + (1 - lam) * self.loss_fn(out, yb[partner])

    # ------------------------------------------------------------- epoch end

    def epoch_metrics(self) -> Metrics:
        """Train and validation metrics, brought to the host in one sync."""
        device_values: dict[str, dict[str, torch.Tensor]] = {"train": {
            "loss": self.step_loss.mean(),
            "grad_norm": self._grad_norm(),
            "weight_norm": torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(list(self.model.parameters())))),
        }}
        if self.data.info.task == "classification":
            device_values["train"]["accuracy"] = self.step_correct.sum() / self.rows_per_epoch
        if self.data.has_val:
            device_values["val"] = evaluate(self.model, self.data.x_val, self.data.y_val,
                                            self.data, self.loss_fn, self.autocast,
                                            self.binary_logit, self.eval_rows)
        keys = [(sp, n) for sp, vals in device_values.items() for n in vals]
        host = torch.stack([device_values[sp][n].float() for sp, n in keys]).tolist()
        metrics: Metrics = {}
        for (sp, n), v in zip(keys, host, strict=True):
            metrics.setdefault(sp, {})[n] = v
        self._check_finite(metrics["train"]["loss"])
        metrics["train"].update(lr=self.optimizer.param_groups[0]["lr"],
                                epoch_seconds=self.train_seconds,
                                samples_per_second=self.rows_per_epoch / max(self.train_seconds,
                                                                             1e-9))
        return metrics

    def _grad_norm(self) -> torch.Tensor:
        """Global gradient norm at the epoch's last step."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros((), device=self.device)
        return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))

    def _check_finite(self, mean_loss: float) -> None:
        if math.isfinite(mean_loss):
            return
        bad = (~torch.isfinite(self.step_loss)).nonzero()
        step = int(bad[0]) + 1 if len(bad) else self.steps
        lr = self.optimizer.param_groups[0]["lr"]
        if self.schedule.per_step:  # the lr that step used, not the epoch's last one
            lr = self.schedule.lr(self.epoch, step / self.steps)
        raise TrainingDiverged(
            f"diverged: loss became {'NaN' if math.isnan(mean_loss) else 'infinite'} at "
            f"epoch {self.epoch + 1} step {step} with lr={lr:g}; lower the learning rate, "
            "add warm-up or gradient clipping")

    def end_epoch(self) -> bool:
        """Report the finished epoch; True when early stopping (or the sink) ends the run."""
        metrics = self.epoch_metrics()
        flat = flatten(metrics)
        self.epoch += 1
        self.step, self.perm = 0, None
        monitor = self.tracker.spec.monitor
        was_best = self.tracker.best_epoch
        stop = self.tracker.update(self.epoch, flat[monitor]) if monitor in flat else False
        is_best = self.tracker.best_epoch != was_best
        if is_best and self.restore_best:
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.schedule.observe(flat)
        if not self.schedule.per_step:
            set_lr(self.optimizer, self.schedule.lr(self.epoch))
        stop = stop and self.can_stop_early
        if not stop and (why := self.sink.should_prune(self.epoch, flat)) is not None:
            self.pruned, stop = {"epoch": self.epoch, "reason": why}, True
        if stop:
            self.stopped_early_at = self.epoch
        due = (self.epoch % self.spec.training.checkpoint_every == 0 or is_best or stop
               or self.epoch == self.spec.training.epochs)
        self.sink.epoch_end(EpochReport(self.epoch, metrics, self.pack() if due else None, is_best))
        return stop

    # ------------------------------------------------------------ the result

    def finish(self) -> dict[str, Any]:
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        splits = {"train": (self.data.x_train, self.data.y_train),
                  "val": (self.data.x_val, self.data.y_val),
                  "test": (self.data.x_test, self.data.y_test)}
        final = {name: {k: float(v) for k, v in evaluate(self.model, x, y, self.data,
                                                          self.loss_fn, self.autocast,
                                                          self.binary_logit,
                                                          self.eval_rows).items()}
                 for name, (x, y) in splits.items() if x.shape[0] > 0}
        summary = self._summary_header() | final
        main = "accuracy" if self.data.info.task == "classification" else "rmse"
        summary["generalization_gap"] = {k: final["train"][k] - final["test"][k]
                                         for k in ("loss", main)}
        if self.data.info.task == "classification":
            summary.update(self._classification_report())
        if self.spec.training.record_predictions:
            summary["predictions"] = self._predictions()
        if self.spec.training.sharpness is not None:
            summary["sharpness"] = self._sharpness(self.spec.training.sharpness)
        return summary

    def _predictions(self) -> dict[str, list[Any]]:
        """Class probabilities, or values in original units, for dev and test rows."""
        rows = {"dev": self.data.x_dev, "test": self.data.x_test}
        out: dict[str, list[Any]] = {}
        for name, x in rows.items():
            if x is None:
                continue
            raw = predict(self.model, x, self.autocast, self.eval_rows)
            if self.data.info.task == "regression":
                scale = self.data.target
                values = raw.squeeze(1).cpu().double().numpy() * scale.std[0] + scale.mean[0]
            elif self.binary_logit:
                p = torch.sigmoid(raw)
                values = torch.cat([1 - p, p], dim=1).cpu().numpy()
            else:
                values = torch.softmax(raw, dim=1).cpu().numpy()
            out[name] = np.round(values, 6).tolist()
        return out

    def _sharpness(self, spec: s.Sharpness) -> dict[str, float]:
        from app.training.sharpness import epsilon_sharpness, top_hessian_eigenvalue

        x, y = self.data.x_train[: spec.max_rows], self.data.y_train[: spec.max_rows]
        self.model.eval()

        def closure() -> torch.Tensor:
            return self.loss_fn(self.model(x).float(), y)

        top = top_hessian_eigenvalue(self.model, closure, spec.power_iterations,
                                     self.spec.training.seed)
        sharp = epsilon_sharpness(self.model, closure, spec.epsilon, spec.ascent_steps)
        return {"hessian_top_eigenvalue": top, "epsilon_sharpness": sharp,
                "epsilon": spec.epsilon, "rows": int(x.shape[0])}

    def _summary_header(self) -> dict[str, Any]:
        tracker = self.tracker
        return {
            "task": self.data.info.task,
            "epochs_completed": self.epoch,
            "best_epoch": tracker.best_epoch if tracker.best_epoch > 0 else None,
            "monitor": tracker.spec.monitor,
            "best_value": tracker.best,
            "early_stopped": self.stopped_early_at is not None and self.pruned is None,
            "stopped_epoch": self.stopped_early_at,
            "pruned": self.pruned,
            "restored_best_weights": self.best_weights is not None,
            "parameters": count_parameters(self.model),
            "rows": {"train": int(self.data.x_train.shape[0]), "val": int(self.data.x_val.shape[0]),
                     "test": int(self.data.x_test.shape[0])},
            "seed": self.spec.training.seed,
            "device": str(self.device),
            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                         "numpy": np.__version__, "scikit_learn": sklearn.__version__},
        }

    def _classification_report(self) -> dict[str, Any]:
        out = predict(self.model, self.data.x_test, self.autocast, self.eval_rows)
        pred = (out.squeeze(1) > 0).long() if self.binary_logit else out.argmax(dim=1)
        cm = confusion_matrix(pred, self.data.y_test, self.data.info.n_classes).cpu()
        return {"macro_f1": macro_f1(cm), "confusion_matrix": cm.tolist()}

    # ------------------------------------------------------------ checkpoint

    def pack(self) -> bytes:
        """The full training state, mid-epoch included, as one safetensors blob."""
        optim_tensors, optim_meta = ckpt.flatten_optimizer(self.optimizer.state_dict())
        tensors = (ckpt.with_prefix("model", self.model.state_dict())
                   | ckpt.with_prefix("optim", optim_tensors)
                   | {"rng.torch": torch.get_rng_state(), "rng.gen": self.gen.get_state()})
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        if self.best_weights is not None:
            tensors |= ckpt.with_prefix("best", self.best_weights)
        if self.perm is not None:
            tensors |= {"epoch.perm": self.perm, "epoch.loss": self.step_loss,
                        "epoch.correct": self.step_correct}
        state = {"version": 1, "epoch": self.epoch, "step": self.step, "optim": optim_meta,
                 "schedule": self.schedule.state_dict(), "tracker": self.tracker.state_dict(),
                 "np_rng": self.np_rng.bit_generator.state, "stopped_early_at":
                 self.stopped_early_at, "pruned": self.pruned,
                 "lr": self.optimizer.param_groups[0]["lr"]}
        return ckpt.pack(tensors, state)

    def load(self, blob: bytes) -> None:
        tensors, state = ckpt.unpack(blob)
        self.model.load_state_dict(ckpt.strip_prefix("model", tensors))
        self.optimizer.load_state_dict(
            ckpt.unflatten_optimizer(ckpt.strip_prefix("optim", tensors), state["optim"]))
        torch.set_rng_state(tensors["rng.torch"])
        self.gen.set_state(tensors["rng.gen"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        best = ckpt.strip_prefix("best", tensors)
        self.best_weights = {k: v.to(self.device) for k, v in best.items()} or None
        self.epoch, self.step = state["epoch"], state["step"]
        if "epoch.perm" in tensors:
            self.perm = tensors["epoch.perm"].to(self.device)
            self.step_loss = tensors["epoch.loss"].to(self.device)
            self.step_correct = tensors["epoch.correct"].to(self.device)
            self.epoch_started = time.perf_counter()
        self.schedule.load_state_dict(state["schedule"])
        self.tracker.load_state_dict(state["tracker"])
        self.np_rng.bit_generator.state = state["np_rng"]
        self.stopped_early_at = state["stopped_early_at"]
        self.pruned = state.get("pruned")  # absent in checkpoints written before pruning
        set_lr(self.optimizer, state["lr"])


def train(spec: s.JobSpec, data: Prepared, sink: Sink, resume: bytes | None = None,
          device: torch.device | None = None) -> Outcome:
    """Run one job to completion or to a stop request."""
    trainer = Trainer(spec, data, sink, device or resolve_device(spec.training.device))
    return trainer.run(resume)
