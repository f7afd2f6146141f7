"""The training loop: one readable pass over index slices of a per-epoch permutation.

Speed rules (measured in bench/): data stays on the device; a batch is
``x[perm[i:i+b]]``; per-step losses go into a preallocated device tensor and
reach the host once per epoch; nothing that can be done per epoch is done per
batch. Everything the run depends on is in its ``checkpoint.TrainState``, so a resumed
run ends with the same weights as an uninterrupted one. The end-of-run evaluation is
``report.py``.
"""

from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
from torch import nn

from app import spec as s
from app.training.checkpoint import Best, Cadence, EpochProgress, TrainState
from app.training.data import Prepared
from app.training.divergence import explosion, trivial_loss
from app.training.grad_norms import GradNormRecorder
from app.training.losses import build_loss
from app.training.metrics import Autocast, Evaluator, global_norm, predicted_labels
from app.training.models import build_model
from app.training.optim import (
    LrSchedule,
    build_optimizer,
    decayed_parameters,
    load_optimizer_state,
    set_lr,
)
from app.training.regularize import BatchRegularizer, BestTracker, Patience, WeightNoise, penalty
from app.training.report import RunFacts, summarize
from app.training.results import Outcome, Pruned, Summary
from app.training.shapes import batch_plan, eval_chunk_rows, output_dim
from app.training.sink import EpochReport, Metrics, Sink
from app.training.until import reached

# per-step losses and counts wait in lists this many steps at most before they are stored
KEEP_EVERY_STEPS = 256


class TrainingDiverged(RuntimeError):
    """The loss became NaN, infinite or exploded (``divergence.py``); the message says where
    and what to change."""


def resolve_device(choice: str) -> torch.device:
    if choice == "cuda" or (choice == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("training.device is 'cuda' but this worker has no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")


def flatten(metrics: Metrics) -> dict[str, float]:
    return {f"{split}_{name}": v for split, values in metrics.items() for name, v in values.items()}


def bf16_autocast(device: torch.device) -> Autocast:
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16)


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
        # recomputed on resume: a pure function of the training targets
        self.trivial = trivial_loss(spec.loss, data.y_train, data.info.n_classes, self.loss_fn)
        self.optimizer = build_optimizer(spec.optimizer, self.model)
        self.schedule = LrSchedule(spec.schedule, spec.optimizer.lr, tr.epochs)
        self.batch = BatchRegularizer(reg, data.input_shape, data.info.task != "classification",
                                      self.loss_fn, self.gen, self.np_rng)
        self.decayed = decayed_parameters(self.model, spec.optimizer.decay_all_parameters)
        self.weight_noise = (WeightNoise(self.decayed, reg.weight_noise, self.gen)
                             if reg.weight_noise > 0 else None)
        es = reg.early_stopping
        self.best = BestTracker.for_spec(es, data.has_val)
        self.patience = Patience(es.patience) if es is not None else None
        self.restore_best = es is not None and es.restore_best
        # kept always: every checkpoint carries them, so `best` is served without a
        # checkpoint written at the best epoch itself
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.cadence = Cadence(tr.checkpoint_every, tr.checkpoint_seconds)
        plan = batch_plan(spec, data.x_train.shape[0])
        self.batch_size, self.steps = plan.size, plan.steps
        self.rows_per_epoch = plan.rows_per_epoch
        self.eval_rows = eval_chunk_rows(spec, data.input_shape, n_out, self.batch_size)
        self.autocast: Autocast = (bf16_autocast(device) if tr.precision == "bf16"
                                   else contextlib.nullcontext)
        self.eval = Evaluator(self.model, data, self.loss_fn, self.autocast, self.binary_logit,
                              self.eval_rows)
        self.grad_norms = (GradNormRecorder.for_model(self.model, device)
                           if tr.record_grad_norms else None)
        self.plain = (self.batch.is_identity() and self.weight_noise is None
                      and reg.l1 == 0 and reg.l2 == 0 and self.grad_norms is None
                      and tr.grad_clip_norm is None and tr.precision != "bf16")
        self.epoch = 0  # completed epochs
        self.progress: EpochProgress | None = None  # the epoch being trained
        self.stopped_early_at: int | None = None
        self.pruned: Pruned | None = None  # when the sink's rule ended the run
        set_lr(self.optimizer, self.schedule.lr(0))

    # ------------------------------------------------------------------- run

    def run(self, resume: bytes | None = None) -> Outcome:
        if resume is not None:
            self.restore(TrainState.from_blob(resume))
        while self.epoch < self.spec.training.epochs and self.stopped_early_at is None:
            reason = self.train_epoch()  # a resumed run may already be done
            if reason is not None:
                state = self.snapshot()
                return Outcome("stopped", state.epoch, state.step, reason,
                               checkpoint=state.to_blob())
            if self.end_epoch():
                break
        return Outcome("completed", self.epoch, 0, summary=self.finish())

    def finish(self) -> Summary:
        """The end-of-run report, with the best weights restored when asked for."""
        restored = self.restore_best and self.best_weights is not None
        if restored and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
        facts = RunFacts(self.epoch, self.best, self.stopped_early_at, self.pruned, restored,
                         self.grad_norms.result if self.grad_norms else None)
        return summarize(self.spec, self.eval, self.device, facts)

    def train_epoch(self) -> str | None:
        """One pass over the training rows; returns a stop reason if asked to stop."""
        x, y = self.data.x_train, self.data.y_train
        if self.progress is None:
            self.progress = EpochProgress.start(x.shape[0], self.steps, self.gen, self.device)
        p, bs = self.progress, self.batch_size
        self.model.train()
        classify = self.data.info.task == "classification"
        # per-step figures go to lists and into the progress tensors once, when this call
        # returns: a tensor item assignment per step cost ~20 us (bench/README.md 1e)
        first = p.step
        losses: list[torch.Tensor] = []
        corrects: list[torch.Tensor] = []
        for step in range(first, self.steps):
            if (reason := self.sink.should_stop()) is not None:
                p.step = step
                p.keep(first, losses, corrects)
                return reason
            if self.schedule.per_step:
                set_lr(self.optimizer, self.schedule.lr(self.epoch, (step + 1) / self.steps))
            idx = p.perm[step * bs : (step + 1) * bs]
            out, yb, loss = self.train_step(x[idx], y[idx])
            losses.append(loss)
            if classify:
                corrects.append((predicted_labels(out, self.binary_logit) == yb).sum())
            if len(losses) == KEEP_EVERY_STEPS:  # bounded: one small tensor each meanwhile
                p.keep(first, losses, corrects)
                first, losses, corrects = step + 1, [], []
        p.keep(first, losses, corrects)
        p.seconds = time.perf_counter() - p.started
        return None

    def train_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
        """Forward, backward, step. Returns (output, primary targets, data loss)."""
        if self.plain:
            return self.plain_step(xb, yb)
        reg = self.spec.regularization
        xb, mix_lam, partner = self.batch.inputs(xb)
        if self.weight_noise is not None:
            self.weight_noise.add()
        with self.autocast():
            out = self.model(xb)
        out = out.float()
        loss = self.batch.loss(out, yb, mix_lam, partner)
        extra = penalty(self.decayed, reg.l1, reg.l2)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss if extra is None else loss + extra)
        if self.grad_norms is not None:
            self.grad_norms.record()
        if self.weight_noise is not None:
            self.weight_noise.remove()
        if self.spec.training.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.training.grad_clip_norm)
        self.optimizer.step()
        return out, yb, loss.detach()

    def plain_step(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                       torch.Tensor]:
        """``train_step`` for a spec that uses none of its options: the same operations
        without the calls that would do nothing (~8 µs a step: bench/README.md 1e)."""
        out = self.model(xb)
        loss = self.loss_fn(out, yb)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss)
        self.optimizer.step()
        return out, yb, loss.detach()

    # ------------------------------------------------------------- epoch end

    def end_epoch(self) -> bool:
        """Report the finished epoch; True when early stopping (or the sink) ends the run."""
        metrics = self.epoch_metrics()
        flat = flatten(metrics)
        self.epoch += 1
        self.progress = None
        if self.grad_norms is not None:
            self.grad_norms.end_first_epoch()
        is_best, stop = self.judge(flat)
        stop = stop or reached(self.spec.training.until, flat)
        self.schedule.observe(flat)
        if not self.schedule.per_step:
            set_lr(self.optimizer, self.schedule.lr(self.epoch))
        if not stop and (why := self.sink.should_prune(self.epoch, flat)) is not None:
            self.pruned, stop = Pruned(epoch=self.epoch, reason=why), True
        if stop:
            self.stopped_early_at = self.epoch
        # a best epoch is not forced: its weights travel in the next checkpoint
        due = self.cadence.due(self.epoch) or stop or self.epoch == self.spec.training.epochs
        blob = self.pack() if due else None
        self.sink.epoch_end(EpochReport(self.epoch, metrics, blob, is_best))
        return stop

    def judge(self, flat: dict[str, float]) -> tuple[bool, bool]:
        """(is this epoch the best so far, does early stopping end the run here)."""
        if self.best.monitor not in flat:
            return False, False
        is_best = self.best.update(self.epoch, flat[self.best.monitor])
        if is_best:
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        stop = self.patience is not None and self.patience.update(is_best)
        return is_best, stop

    def epoch_metrics(self) -> Metrics:
        """Train and validation metrics, brought to the host in one sync."""
        assert self.progress is not None  # called right after train_epoch
        p = self.progress
        params, device = list(self.model.parameters()), self.device
        grads = [q.grad for q in params if q.grad is not None]  # of the epoch's last step
        train: dict[str, torch.Tensor] = {"loss": p.loss.mean(),
                                          "grad_norm": global_norm(grads, device),
                                          "weight_norm": global_norm(params, device)}
        if self.data.info.task == "classification":
            train["accuracy"] = p.correct.sum() / self.rows_per_epoch
        device_values = {"train": train}
        if self.data.has_val:
            device_values["val"] = self.eval.metrics(self.data.x_val, self.data.y_val)
        keys = [(sp, n) for sp, vals in device_values.items() for n in vals]
        host = torch.stack([device_values[sp][n].float() for sp, n in keys]).tolist()
        metrics: Metrics = {}
        for (sp, n), v in zip(keys, host, strict=True):
            metrics.setdefault(sp, {})[n] = v
        self._check_finite(metrics["train"]["loss"], p.loss)
        self._check_explosion(metrics["train"]["loss"])
        metrics["train"].update(lr=self.optimizer.param_groups[0]["lr"], epoch_seconds=p.seconds,
                                samples_per_second=self.rows_per_epoch / max(p.seconds, 1e-9))
        return metrics

    def _check_finite(self, mean_loss: float, step_loss: torch.Tensor) -> None:
        if math.isfinite(mean_loss):
            return
        bad = (~torch.isfinite(step_loss)).nonzero()
        step = int(bad[0]) + 1 if len(bad) else self.steps
        lr = self.optimizer.param_groups[0]["lr"]
        if self.schedule.per_step:  # the lr that step used, not the epoch's last one
            lr = self.schedule.lr(self.epoch, step / self.steps)
        raise TrainingDiverged(
            f"diverged: loss became {'NaN' if math.isnan(mean_loss) else 'infinite'} at "
            f"epoch {self.epoch + 1} step {step} with lr={lr:g}; lower the learning rate, "
            "add warm-up or gradient clipping")

    def _check_explosion(self, mean_loss: float) -> None:
        if (how := explosion(mean_loss, self.trivial)) is None:
            return
        lr = self.optimizer.param_groups[0]["lr"]
        raise TrainingDiverged(
            f"diverged: training loss {mean_loss:.2g} at epoch {self.epoch + 1} with lr={lr:g} "
            f"{how}; lower the learning rate, add warm-up or gradient clipping")

    # ------------------------------------------------------------ checkpoint

    def pack(self) -> bytes:
        """A checkpoint blob now; restarts the time rule's count."""
        blob = self.snapshot().to_blob()
        self.cadence.written()
        return blob

    def snapshot(self) -> TrainState:
        """The full training state, mid-epoch included."""
        best = self.best
        return TrainState(
            epoch=self.epoch, model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(), lr=self.optimizer.param_groups[0]["lr"],
            schedule=self.schedule.state_dict(),
            best=Best(best.best, best.best_epoch, self.patience.wait if self.patience else 0),
            best_weights=self.best_weights, rng_torch=torch.get_rng_state(),
            rng_gen=self.gen.get_state(),
            rng_cuda=torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
            else None, np_rng=dict(self.np_rng.bit_generator.state), progress=self.progress,
            stopped_early_at=self.stopped_early_at,
            pruned=self.pruned.model_dump() if self.pruned else None,
            grad_norms=self.grad_norms.state() if self.grad_norms else None)

    def restore(self, state: TrainState) -> None:
        self.model.load_state_dict(state.weights_only())
        load_optimizer_state(self.optimizer, state.optimizer)
        torch.set_rng_state(state.rng_torch)
        self.gen.set_state(state.rng_gen)
        if state.rng_cuda is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(state.rng_cuda, self.device)
        self.best_weights = ({k: v.to(self.device) for k, v in state.best_weights.items()}
                             if state.best_weights else None)
        self.epoch = state.epoch
        self.progress = state.progress.to(self.device) if state.progress else None
        self.schedule.load_state_dict(state.schedule)
        self.best.best, self.best.best_epoch = state.best.value, state.best.epoch
        if self.patience is not None:
            self.patience.wait = state.best.wait
        self.np_rng.bit_generator.state = state.np_rng
        self.stopped_early_at = state.stopped_early_at
        self.pruned = Pruned.model_validate(state.pruned) if state.pruned else None
        if self.grad_norms is not None and state.grad_norms is not None:
            self.grad_norms.load(state.grad_norms)
        set_lr(self.optimizer, state.lr)
