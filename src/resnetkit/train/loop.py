"""The one training loop.

``train(cfg, run_dir)`` trains a zoo model on real data and leaves a run directory behind
(``config.toml``, ``metrics.jsonl``, ``checkpoints/``, ``model.safetensors``, ``model.json``,
``summary.json``, ``drift_reference.safetensors``). The same code runs alone or under
``torchrun`` (DDP), on CPU (bf16 autocast) or CUDA (bf16, or fp16 with a grad scaler).

Resuming is exact: the data order is a function of (seed, epoch), the schedule a function
of the step, and the checkpoint holds every other piece of state, so a run killed mid-epoch
and resumed ends with the same weights as one that never stopped (on CPU).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from resnetkit.config import TrainConfig, from_dict, to_dict
from resnetkit.contract import git_commit, write_summary
from resnetkit.data import (
    AugmentedBatch,
    BatchLoader,
    ImageDataset,
    alternating_flips,
    augment_batch,
    fingerprint,
)
from resnetkit.errors import ConfigError, TrainingError
from resnetkit.evaluate import (
    autocast,
    predict_embeddings,
    predict_log_probs,
    resolve_device,
    resolve_precision,
)
from resnetkit.models import ClassifierModel, profile, save_model
from resnetkit.models.layers import PatchWhitening
from resnetkit.train import rundir
from resnetkit.train.adversarial import adversarial_batch, check_adversarial
from resnetkit.train.checkpoint import (
    BEST,
    LATEST,
    capture_rng,
    load_checkpoint,
    restore_rng,
    save_checkpoint,
)
from resnetkit.train.distributed import (
    DistEnv,
    all_reduce_sum,
    init_distributed,
    shutdown_distributed,
    wrap_ddp,
)
from resnetkit.train.hard_examples import HardExamples, check_hard_examples
from resnetkit.train.optim import ModelEMA, build_optimizer
from resnetkit.train.progress import TrainProgress
from resnetkit.train.schedule import lr_factor, warmup_steps
from resnetkit.train.setup import (
    TrainData,
    augment_spec,
    build_model,
    load_train_data,
    model_kwargs,
    set_train_mode,
)

__all__ = [
    "PHASES",
    "PHASE_AUGMENT",
    "PHASE_BACKWARD",
    "PHASE_FORWARD",
    "PHASE_OPTIMIZER",
    "TrainResult",
    "Trainer",
    "check_config",
    "train",
]

#: The parts of one training step, as torch.profiler record_function labels.
PHASE_AUGMENT = "resnetkit.augment"  # crop, flip, normalise (and the attack, if adversarial)
PHASE_FORWARD = "resnetkit.forward"  # the model and the loss
PHASE_BACKWARD = "resnetkit.backward"
PHASE_OPTIMIZER = "resnetkit.optimizer"  # clipping, the step, the schedule, EMA
PHASES = (PHASE_AUGMENT, PHASE_FORWARD, PHASE_BACKWARD, PHASE_OPTIMIZER)


@dataclass(frozen=True)
class TrainResult:
    """What a finished run reports (``summary.json`` holds the same and more)."""

    run_dir: Path
    val_accuracy: float | None
    best_val_accuracy: float | None
    epochs_run: int
    images_per_s: float  # over the whole run, the first epoch's warm-up included
    train_seconds: float
    stopped_early: bool
    steady_images_per_s: float = 0.0  # median over the epochs after the first


def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    trainer: type[Trainer] | None = None,
    **options: Any,
) -> TrainResult:
    """Train ``cfg`` into ``run_dir``; with ``resume``, continue from its latest checkpoint.

    Args:
        trainer: a :class:`Trainer` subclass with another loss (e.g. distillation) or
            another step (e.g. sparse fine-tuning); ``options`` are passed on to it.

    Raises:
        ConfigError: for invalid settings, or resuming with a different config.
        DataError: when the dataset is missing or corrupt.
        TrainingError: when the loss or a gradient stops being finite.
    """
    threads = torch.get_num_threads()
    out = Path(run_dir)
    created = not out.exists()
    try:
        return (trainer or Trainer)(cfg, out, resume=resume, **options).fit()
    except BaseException:
        if not resume and os.environ.get("RANK", "0") == "0":
            # A run that failed before its first checkpoint leaves nothing to resume: remove
            # what it wrote, so a rerun with the same --out starts cleanly.
            rundir.discard_if_unstarted(out, created)
        raise
    finally:
        torch.set_num_threads(threads)  # cfg.num_threads applies to this run only
        shutdown_distributed()


def check_config(cfg: TrainConfig) -> None:
    """Refuse settings that make no sense, before any data is read or file written.

    Raises:
        ConfigError: naming the setting and its valid range.
    """
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConfigError(f"epochs and batch_size must be >= 1, got {cfg.epochs}, {cfg.batch_size}")
    if cfg.checkpoint_every_steps is not None and cfg.checkpoint_every_steps < 1:
        raise ConfigError("checkpoint_every_steps must be >= 1 when set")
    if cfg.tta_shift < 0:
        raise ConfigError(f"tta_shift is a number of pixels >= 0, got {cfg.tta_shift}")
    if cfg.optim.whiten_bias_epochs is not None and cfg.optim.whiten_bias_epochs < 0:
        raise ConfigError(
            f"optim.whiten_bias_epochs must be >= 0 when set, got {cfg.optim.whiten_bias_epochs}"
        )
    if cfg.num_threads is not None and cfg.num_threads < 1:
        raise ConfigError(f"num_threads must be >= 1 when set, got {cfg.num_threads}")
    if cfg.early_stop_patience is not None and cfg.early_stop_patience < 1:
        raise ConfigError(
            f"early_stop_patience must be >= 1 epoch when set, got {cfg.early_stop_patience}"
        )
    if not 0 <= cfg.data.val_fraction < 1:
        raise ConfigError(
            f"data.val_fraction must be in [0, 1) (0: no validation split), "
            f"got {cfg.data.val_fraction}"
        )
    for name in ("limit", "test_limit"):
        value = getattr(cfg.data, name)
        if value is not None and value < 1:
            raise ConfigError(f"data.{name} must be >= 1 when set, got {value}")
    check_adversarial(cfg.adversarial)
    check_hard_examples(cfg)


class Trainer:
    """State of one run; :meth:`fit` is the loop."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, *, resume: bool = False) -> None:
        check_config(cfg)
        self.cfg, self.run_dir = cfg, run_dir
        self.device = resolve_device(cfg.device)
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.env: DistEnv = init_distributed(self.device)
        if self.device.type == "cuda" and self.env.enabled:
            self.device = torch.device("cuda", self.env.local_rank)
            torch.cuda.set_device(self.device)
        torch.manual_seed(cfg.seed)
        self.data: TrainData = load_train_data(cfg.data, cfg.seed)
        self.kwargs = model_kwargs(cfg, self.data)
        self.model = build_model(cfg, self.kwargs, self.device, self.data)
        # A recipe's whiten_bias_epochs does nothing to a model without a whitening stem
        # (e.g. the quickstart recipe with --model resnet8), as its stem argument does not.
        self.whitening = [m for m in self.model.modules() if isinstance(m, PatchWhitening)]
        self.ddp_model = wrap_ddp(self.model, self.env, self.device, cfg.sync_bn)
        self.loader = BatchLoader(
            self.data.train.images,
            self.data.train.labels,
            cfg.batch_size,
            seed=cfg.seed,
            drop_last=len(self.data.train) >= cfg.batch_size,
            rank=self.env.rank,
            world_size=self.env.world_size,
            device=self.device,
        )
        self.augment = augment_spec(cfg, self.data.train)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.hard = (
            HardExamples(
                cfg.hard_examples, cfg.epochs, self.loader.num_samples, cfg.seed, self.device
            )
            if cfg.hard_examples.epochs
            else None
        )
        self.order: torch.Tensor | None = None  # a hard epoch's dataset indices
        self.total_steps = sum(self.steps_in_epoch(e) for e in range(cfg.epochs))
        warmup = warmup_steps(cfg.optim.warmup_epochs, len(self.loader), self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda step: lr_factor(
                step,
                self.total_steps,
                warmup_steps=warmup,
                kind=cfg.optim.schedule,
                min_ratio=cfg.optim.min_lr_ratio,
            ),
        )
        fp16 = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema_decay else None
        # Augmentation randomness: one generator per rank, saved in every checkpoint.
        self.generator = torch.Generator().manual_seed(cfg.seed * 1000 + self.env.rank)
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.history: list[dict[str, Any]] = []
        self.best_acc: float | None = None
        self.bad_epochs = 0
        self.train_seconds, self.images_seen = 0.0, 0
        self.epoch_sums: list[float] = [0.0, 0, 0]
        self.term_sums: dict[str, float] = {}
        self.progress = TrainProgress(
            enabled=cfg.progress and self.env.is_main, lines=self.env.is_main
        )
        if resume:
            self._resume()
        elif self.env.is_main:
            rundir.start(run_dir, cfg)

    # --- one step ----------------------------------------------------------------------
    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The run's mixed precision (a no-op context for fp32), for every forward pass."""
        return autocast(self.device, self.amp_dtype)

    def compute_loss(
        self, logits: torch.Tensor, batch: AugmentedBatch, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss, plus named terms to log (subclasses add e.g. distillation)."""
        return batch.cross_entropy(logits, self.cfg.optim.label_smoothing), {}

    def after_step(self) -> None:
        """Called after every optimiser step, before the EMA update (e.g. to re-apply masks)."""

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimiser steps of 0-based ``epoch`` (fewer in a hard-examples epoch)."""
        if self.hard is not None and self.hard.is_hard(epoch):
            return self.loader.steps_for(self.hard.count)
        return len(self.loader)

    def _train_step(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        flips: torch.Tensor | None,
        indices: torch.Tensor | None = None,
    ) -> tuple[float, int, dict[str, float]]:
        # The phase labels cost a microsecond each and name the parts of a step in a
        # torch.profiler trace (bench/epoch_profile.py reads them).
        with record_function(PHASE_AUGMENT):
            batch = augment_batch(
                images, labels, self.augment, self.data.spec, self.generator, flips=flips
            )
            x = batch.images
            if self.cfg.adversarial.method != "none":
                # Attack the unwrapped model: DDP must see exactly one backward per step.
                x = adversarial_batch(
                    self.model,
                    batch,
                    self.cfg.adversarial,
                    self.data.spec,
                    self.generator,
                    self.autocast,
                )
            if self.cfg.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
        with record_function(PHASE_FORWARD):
            with self.autocast():
                logits = self.ddp_model(x).float()  # (B, num_classes), float32 under autocast too
            loss, terms = self.compute_loss(logits, batch, x)
            if self.hard is not None and indices is not None:
                with torch.no_grad():
                    self.hard.record(indices, batch.cross_entropy(logits, reduction="none"))
        with record_function(PHASE_BACKWARD):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
        with record_function(PHASE_OPTIMIZER):
            self.scaler.unscale_(self.optimizer)
            clip = self.cfg.optim.clip_grad_norm
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip or math.inf)
            loss_value = loss.item()
            # fp16 overflow is expected and handled by the scaler (it skips the step).
            if not math.isfinite(loss_value) or (
                not self.scaler.is_enabled() and not torch.isfinite(grad_norm)
            ):
                self._diverged(f"loss={loss_value}, gradient norm={float(grad_norm)}")
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.after_step()
            if self.ema is not None:
                self.ema.update(self.model)
        correct = int((logits.argmax(dim=1) == batch.targets).sum())
        return loss_value, correct, {k: float(v) for k, v in terms.items()}

    def _diverged(self, what: str) -> None:
        latest = self.run_dir / "checkpoints" / LATEST
        where = f"the last good checkpoint is {latest}" if latest.is_file() else "no checkpoint"
        raise TrainingError(
            f"training diverged at epoch {self.epoch} step {self.step} (global step "
            f"{self.global_step}): {what}; {where} "
            "(lower optim.lr, set optim.clip_grad_norm, or use precision='fp32')"
        )

    # --- the loop ----------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Run the remaining epochs, then write the run directory's results."""
        stopped_early = False
        while self.epoch < self.cfg.epochs and not stopped_early:
            self._train_epoch()
            stopped_early = self._end_epoch()
        final = self.ema.module if self.ema is not None else self.model
        assert isinstance(final, ClassifierModel)
        val = self.history[-1].get("val_acc") if self.history else None
        result = TrainResult(
            run_dir=self.run_dir,
            val_accuracy=val,
            best_val_accuracy=self.best_acc,
            epochs_run=self.epoch,
            images_per_s=self.images_seen / max(self.train_seconds, 1e-9),
            train_seconds=self.train_seconds,
            stopped_early=stopped_early,
            steady_images_per_s=_steady_rate(self.history),
        )
        if self.env.is_main:
            self._write_results(final, result)
        self.progress.close()
        return result

    def _write_results(self, model: ClassifierModel, result: TrainResult) -> None:
        """The model artifact, the drift reference and ``summary.json``."""
        model = model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        spec = self.data.spec
        prof = profile(model, spec.input_size)
        save_model(
            model,
            self.run_dir,
            arch=self.cfg.model.arch,
            kwargs=self.kwargs,
            labels=self.data.labels,
            preprocessing=spec,
            extra={
                "input_size": list(spec.input_size),
                "profile": {"params": prof.params, "macs": prof.macs},
            },
        )
        rundir.write_drift_reference(self.run_dir, drift_reference(model, self.data))
        write_summary(self.run_dir, self._summary(result, prof.params, prof.macs))

    def _summary(self, result: TrainResult, params: int, macs: int) -> dict[str, Any]:
        cfg, data = self.cfg, self.data
        return {
            "run_id": f"{self.run_dir.name}-{uuid.uuid4().hex[:8]}",
            "arch": cfg.model.arch,
            "dataset": {
                "name": data.train.name,
                "fingerprint": fingerprint(data.train),
                "train_samples": len(data.train),
                "val_samples": len(data.val) if data.val is not None else 0,
                # --skip-bad-images: what was left out, and why.
                "skipped": [{"path": b.path, "reason": b.reason} for b in data.train.skipped],
            },
            "seed": cfg.seed,
            "epochs": result.epochs_run,
            "stopped_early": result.stopped_early,
            "val_accuracy": result.val_accuracy,
            "best_val_accuracy": result.best_val_accuracy,
            "train_seconds": round(result.train_seconds, 3),
            "images_per_s": round(result.images_per_s, 1),
            "steady_images_per_s": round(result.steady_images_per_s, 1),
            "params": params,
            "macs": macs,
            "code_version": git_commit(Path(__file__).resolve().parent),
        }

    def _set_whiten_bias_training(self) -> None:
        """Train the whitening stem's bias only in its first epochs, as airbench does.

        Once it stops, the stem is a fixed function and the first convolution's input
        gradient is no longer computed (docs/recipes.md has what that saves per step).
        """
        epochs = self.cfg.optim.whiten_bias_epochs
        if epochs is None:
            return
        trains = self.epoch < epochs
        changed = [m for m in self.whitening if m.bias.requires_grad != trains]
        for m in changed:
            m.bias.requires_grad_(trains)
        if changed and self.env.enabled:
            # DDP waits for a gradient of every parameter it was built with: build it again.
            # self.model already holds any SyncBatchNorm the first wrap converted to.
            self.ddp_model = wrap_ddp(self.model, self.env, self.device, sync_bn=False)

    def _train_epoch(self) -> None:
        self._set_whiten_bias_training()
        set_train_mode(self.ddp_model, self.cfg.freeze)
        self.augment = augment_spec(self.cfg, self.data.train, self.epoch)
        steps = self.steps_in_epoch(self.epoch)
        if self.step == 0:
            self.epoch_sums = [0.0, 0, 0]  # loss * n, correct, n; restored on resume
            self.term_sums = {}
            self.order = None  # the loader's permutation of every image
            if self.hard is not None and self.hard.is_hard(self.epoch):
                self.order = self.hard.order(self.epoch)
        self.progress.start_epoch(self.epoch, self.cfg.epochs, steps, self.step)
        every = self.cfg.checkpoint_every_steps
        tick = time.perf_counter()  # the clock covers fetching the batch too
        batches = self.loader.batches(self.epoch, start_step=self.step, order=self.order)
        for indices, images, labels in batches:
            flips = None
            if self.augment.alternate_flips:
                flips = alternating_flips(indices, self.epoch, self.cfg.seed)
            loss, ok, terms = self._train_step(images, labels, flips, indices)
            n = labels.shape[0]
            sums = self.epoch_sums
            self.epoch_sums = [sums[0] + loss * n, sums[1] + ok, sums[2] + n]
            for name, value in terms.items():
                self.term_sums[name] = self.term_sums.get(name, 0.0) + value * n
            self.images_seen += n * self.env.world_size
            self.step += 1
            self.global_step += 1
            if every and self.step % every == 0 and self.step < steps:
                if self.hard is not None:
                    self.hard.sync(self.env)  # on every rank: the checkpoint holds the table
                self._save(LATEST)
            now = time.perf_counter()
            self.train_seconds, tick = self.train_seconds + (now - tick), now
            self.progress.advance(loss, ok / max(n, 1), self.images_seen / self.train_seconds)
        if self.hard is not None:
            self.hard.sync(self.env)
        totals = torch.tensor(self.epoch_sums, dtype=torch.float64)
        loss_total, correct_total, seen_total = all_reduce_sum(totals, self.env).tolist()
        self._epoch_train = {
            "train_loss": loss_total / max(seen_total, 1),
            "train_acc": correct_total / max(seen_total, 1),
        }
        # Extra loss terms (e.g. distillation) are logged as this rank saw them.
        local_seen = max(self.epoch_sums[2], 1)
        self._epoch_train.update({f"train_{k}": v / local_seen for k, v in self.term_sums.items()})

    def _end_epoch(self) -> bool:
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.global_step}
        record.update(self._epoch_train)
        record["lr"] = self.scheduler.get_last_lr()[0]
        if self.data.val is not None:
            val_loss, val_acc = validate(
                self.ema.module if self.ema is not None else self.model,
                self.data.val,
                self.data,
                self.device,
                self.cfg.precision,
            )
            record.update(val_loss=val_loss, val_acc=val_acc)
        record["images_per_s"] = self.images_seen / max(self.train_seconds, 1e-9)
        previous = self.history[-1] if self.history else {}
        seen_before = previous.get("images_per_s", 0.0) * previous.get("train_seconds", 0.0)
        seconds = self.train_seconds - previous.get("train_seconds", 0.0)
        record["epoch_images_per_s"] = (self.images_seen - seen_before) / max(seconds, 1e-9)
        record["train_seconds"] = self.train_seconds
        record.update(self.progress.epoch_cost())
        self.history.append(record)
        self.epoch, self.step, self.order = self.epoch + 1, 0, None
        improved = "val_acc" in record and (
            self.best_acc is None or record["val_acc"] > self.best_acc
        )
        if improved:
            self.best_acc, self.bad_epochs = record["val_acc"], 0
        else:
            self.bad_epochs += 1
        if self.env.is_main:
            rundir.append_metrics(self.run_dir, record)
            self._save(LATEST)
            if improved:
                self._save(BEST)
        self.progress.end_epoch(record)
        patience = self.cfg.early_stop_patience
        return patience is not None and "val_acc" in record and self.bad_epochs >= patience

    # --- checkpoints -------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": capture_rng({"augment": self.generator}),
            "position": {
                "epoch": self.epoch,
                "step": self.step,
                "global_step": self.global_step,
                "epoch_sums": self.epoch_sums,
                "term_sums": self.term_sums,
                "order": self.order,  # a hard epoch's, so that it resumes mid-way exactly
            },
            "hard_examples": self.hard.state_dict() if self.hard is not None else None,
            "config": to_dict(self.cfg),
            "history": self.history,
            "best_acc": self.best_acc,
            "bad_epochs": self.bad_epochs,
            "clock": {"train_seconds": self.train_seconds, "images_seen": self.images_seen},
        }

    def _save(self, name: str) -> None:
        state = self._state()
        # An update can overflow the weights while the loss that caused it was still finite;
        # such a state must never replace the last good checkpoint.
        if not all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point()):
            self._diverged("the weights are no longer finite")
        save_checkpoint(self.run_dir / "checkpoints" / name, state)

    def _resume(self) -> None:
        state = load_checkpoint(self.run_dir / "checkpoints" / LATEST, map_location=self.device)
        saved = from_dict(TrainConfig, state["config"])
        changed = rundir.config_differences(saved, self.cfg)
        if changed:
            raise ConfigError(
                f"cannot resume {self.run_dir} with a different config ({', '.join(changed)}); "
                "start a new run directory instead"
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        restore_rng(state["rng"], {"augment": self.generator})
        pos = state["position"]
        self.epoch, self.step, self.global_step = pos["epoch"], pos["step"], pos["global_step"]
        self.epoch_sums = list(pos["epoch_sums"])
        self.term_sums = dict(pos["term_sums"])
        self.order = pos.get("order")
        if self.order is not None:
            self.order = self.order.cpu()
        if self.hard is not None:
            self.hard.load_state_dict(state["hard_examples"])
        self.history = list(state["history"])
        self.best_acc, self.bad_epochs = state["best_acc"], state["bad_epochs"]
        self.train_seconds = state["clock"]["train_seconds"]
        self.images_seen = state["clock"]["images_seen"]
        if self.env.is_main:
            rundir.rewrite_metrics(self.run_dir, self.history)


def _steady_rate(history: list[dict[str, Any]]) -> float:
    """Images/s of a typical epoch: the median over the epochs after the first (warm-up)."""
    rates = [r["epoch_images_per_s"] for r in history if "epoch_images_per_s" in r]
    steady = rates[1:] or rates
    return statistics.median(steady) if steady else 0.0


def validate(
    model: nn.Module,
    dataset: ImageDataset,
    data: TrainData,
    device: torch.device,
    precision: str,
) -> tuple[float, float]:
    """Mean loss and top-1 accuracy on ``dataset``, through the one evaluation loop."""
    log_probs = predict_log_probs(
        model, dataset.images, data.spec, device=device, precision=precision
    )
    labels = dataset.labels
    loss = float(F.nll_loss(log_probs, labels, reduction="mean"))
    return loss, float((log_probs.argmax(dim=1) == labels).float().mean())


# Enough reference samples for the drift tests; the whole of a large training set (used when
# there is no validation split) would cost more time than a training epoch.
DRIFT_SAMPLES = 5000


def drift_reference(
    model: ClassifierModel, data: TrainData, max_samples: int = DRIFT_SAMPLES
) -> dict[str, torch.Tensor]:
    """Pre-logits embeddings ``(N, D)``, softmax outputs ``(N, K)``, labels and logits
    ``(N, K)`` on held-out data.

    The validation split, or the training set when there is none; at most ``max_samples``
    of it, evenly spaced so that a dataset stored class by class keeps every class. Float32
    (not the training precision): the reference that live traffic is compared with should be
    as faithful as the model can give. The logits (the classifier applied to the same
    embeddings, no second pass over the images) are what the out-of-distribution detector's
    energy score is calibrated on (``resnetkit.monitor.ood``); drift detection ignores them.
    """
    dataset = data.val if data.val is not None else data.train
    picked = torch.linspace(0, len(dataset) - 1, min(len(dataset), max_samples)).long()
    embeddings, probabilities = predict_embeddings(model, dataset.images[picked], data.spec)
    return {
        "embeddings": embeddings,
        "probabilities": probabilities,
        "labels": dataset.labels[picked].clone(),
        "logits": _head_logits(model, embeddings),
    }


def _head_logits(model: ClassifierModel, embeddings: torch.Tensor) -> torch.Tensor:
    """The classifier's logits ``(N, K)`` of pre-logits embeddings, in float32 on the CPU."""
    head = model.get_classifier()
    weight = head.weight
    with torch.no_grad():
        logits = head(embeddings.to(device=weight.device, dtype=weight.dtype))
    return logits.float().cpu().contiguous()
