"""Knowledge distillation (Hinton et al. 2015) through the one training loop.

:class:`DistillTrainer` is the :class:`~resnetkit.train.Trainer` with a different loss: the
student sees the same augmented batch as the teacher and learns from
``alpha * T² * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy``, where ``_T`` means
softmax at temperature ``T``. Both terms are logged per epoch (``train_kd_loss``,
``train_ce_loss`` in ``metrics.jsonl``); everything else — schedule, checkpoints, exact
resume, the run directory — is the trainer's.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from resnetkit.config import TrainConfig
from resnetkit.data import AugmentedBatch
from resnetkit.errors import ConfigError
from resnetkit.train import TrainResult, train
from resnetkit.train.loop import Trainer

__all__ = ["DistillTrainer", "distill", "kd_loss"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² * KL(softmax(teacher/T) || softmax(student/T))``, averaged over the batch.

    The ``T²`` keeps the gradient scale independent of the temperature.
    """
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


class DistillTrainer(Trainer):
    """The training loop with a teacher's soft targets added to the loss."""

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        teacher: nn.Module,
        *,
        alpha: float = 0.5,
        temperature: float = 4.0,
        resume: bool = False,
    ) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        super().__init__(cfg, run_dir, resume=resume)
        self.teacher = teacher.to(self.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha, self.temperature = alpha, temperature

    def compute_loss(
        self, logits: torch.Tensor, batch: AugmentedBatch, inputs: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.no_grad(), self.autocast():
            teacher_logits = self.teacher(inputs).float()
        if teacher_logits.shape != logits.shape:
            raise ConfigError(
                f"teacher gives {tuple(teacher_logits.shape[1:])} outputs, the student "
                f"{tuple(logits.shape[1:])}; they must share the classes"
            )
        ce = batch.cross_entropy(logits, self.cfg.optim.label_smoothing)
        kd = kd_loss(logits, teacher_logits, self.temperature)
        loss = self.alpha * kd + (1.0 - self.alpha) * ce
        return loss, {"kd_loss": kd.detach(), "ce_loss": ce.detach()}


def distill(
    cfg: TrainConfig,
    run_dir: str | Path,
    teacher: nn.Module,
    *,
    alpha: float = 0.5,
    temperature: float = 4.0,
    resume: bool = False,
) -> TrainResult:
    """Train ``cfg.model`` as a student of ``teacher`` into ``run_dir`` (see :func:`train`)."""
    return train(
        cfg,
        run_dir,
        resume=resume,
        trainer=DistillTrainer,
        teacher=teacher,
        alpha=alpha,
        temperature=temperature,
    )
