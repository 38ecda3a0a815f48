"""Progress display for training: a bar per epoch with loss, accuracy, images/s and ETA."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["TrainProgress"]


class TrainProgress:
    """A rich progress bar per epoch, and one printed line per finished epoch.

    Args:
        enabled: draw the bars (``--no-progress`` turns them off, for logs).
        lines: print the per-epoch summary lines (off on every DDP rank but the first).
    """

    def __init__(self, enabled: bool = True, *, lines: bool = True) -> None:
        self.enabled = enabled
        self.lines = lines
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def start_epoch(self, epoch: int, epochs: int, steps: int, start_step: int) -> None:
        """Open the bar of ``epoch`` (0-based), already ``start_step`` steps in."""
        if not self.enabled:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.start()
        self._task = self._progress.add_task(
            f"epoch {epoch + 1}/{epochs}", total=steps, completed=start_step, stats=""
        )

    def advance(self, loss: float, accuracy: float, images_per_s: float) -> None:
        """One step done."""
        if self._progress is None or self._task is None:
            return
        stats = f"loss {loss:.4f} acc {accuracy:.3f} {images_per_s:,.0f} img/s"
        self._progress.update(self._task, advance=1, stats=stats)

    def end_epoch(self, record: dict[str, Any]) -> None:
        """Replace the bar with a one-line summary of the epoch."""
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        if not self.lines:
            return
        parts = [f"epoch {record['epoch']}"]
        parts += [
            f"{k} {record[k]:.4f}"
            for k in ("train_loss", "train_acc", "val_loss", "val_acc")
            if k in record
        ]
        parts.append(f"{record.get('epoch_images_per_s', record['images_per_s']):,.0f} img/s")
        self.console.print("  ".join(parts))

    def close(self) -> None:
        """Stop drawing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
