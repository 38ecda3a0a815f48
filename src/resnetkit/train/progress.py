"""Progress display for training: a bar per epoch with loss, accuracy, images/s and ETA,
and each finished epoch's line with its CPU time and cost."""

from __future__ import annotations

import os
import time
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

from resnetkit.cost import Prices, cost, load_prices, peak_rss_gib

__all__ = ["PRICES_ENV", "TrainProgress"]

#: The price file of the cost per epoch (default: the packaged ``resnetkit/prices.toml``).
PRICES_ENV = "RESNETKIT_PRICES"


class TrainProgress:
    """A rich progress bar per epoch, and one printed line per finished epoch.

    Args:
        enabled: draw the bars (``--no-progress`` turns them off, for logs).
        lines: print the per-epoch summary lines (off on every DDP rank but the first).
        prices: what compute costs (default: ``$RESNETKIT_PRICES``, else the packaged file).

    Raises:
        ConfigError: the price file is unreadable or malformed (before any training).
    """

    def __init__(
        self, enabled: bool = True, *, lines: bool = True, prices: Prices | None = None
    ) -> None:
        self.enabled = enabled
        self.lines = lines
        self.console = Console(stderr=True)
        self.prices = prices or load_prices(os.environ.get(PRICES_ENV) or None)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self._clock = (time.process_time(), time.perf_counter())

    def start_epoch(self, epoch: int, epochs: int, steps: int, start_step: int) -> None:
        """Open the bar of ``epoch`` (0-based), already ``start_step`` steps in."""
        self._clock = (time.process_time(), time.perf_counter())
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

    def epoch_cost(self) -> dict[str, float]:
        """This process's CPU-seconds since the epoch began (training and validation; under
        ``torchrun``, this rank's), and their price on OpenCost's two bases: allocation (the
        CPUs this process may run on, for the wall time) and usage (the CPU-seconds), each
        with the peak resident memory."""
        cpu_s = time.process_time() - self._clock[0]
        wall_s = time.perf_counter() - self._clock[1]
        rss = peak_rss_gib()
        c = cost(cpu_s, wall_s, self.prices, used_gib=rss,
                 request_cpus=len(os.sched_getaffinity(0)), request_gib=rss)  # fmt: skip
        return {"epoch_cpu_seconds": cpu_s, "epoch_usd_allocation": c.allocation,
                "epoch_usd_usage": c.usage}  # fmt: skip

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
        if "epoch_cpu_seconds" in record:
            parts.append(
                f"{record['epoch_cpu_seconds']:,.0f} CPU-s "
                f"({self.prices.currency} {record['epoch_usd_allocation']:.2g} allocation, "
                f"{record['epoch_usd_usage']:.2g} usage)"
            )
        self.console.print("  ".join(parts), soft_wrap=True)  # one line per epoch, in logs too

    def close(self) -> None:
        """Stop drawing."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
