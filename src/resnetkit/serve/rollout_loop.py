"""The rollout control loop: the registry, leases, the analysis, and the decisions.

The rollout itself lives in the registry database (:mod:`resnetkit.registry.rollouts`), so
every replica sharing the registry follows the same one. Each replica, every ``poll_s``:

1. reads the model's latest rollout and hands the router its :class:`RoutingPlan` (or none);
   loads the canary version if it is not loaded yet (a canary that cannot be loaded rolls
   the rollout back, with the reason);
2. writes what the router counted in this step (:meth:`RolloutRouter.step_counts`) to the
   database;
3. takes the analysis lease if it is free; the holder analyses every ``interval_s`` and moves
   the rollout on: next step, promotion (the alias moves, in the same transaction, with the
   analysis summary as its reason) or rollback (weight 0, alias unchanged, the failed checks
   and their values in the rollout's audit log).

Routing itself, measurement and feedback are the router's (:mod:`resnetkit.serve.router`):
the loop never sees a request, the router never sees the registry.

A finished rollout is applied everywhere it was followed: after promotion the canary is the
default version and the old stable is unloaded; after a rollback or an abort the canary is
unloaded. A replica that starts after a rollout finished serves what it was asked to serve
(``serve fm:1 fm:2`` keeps both, whatever an old rollout of ``fm`` decided).

While the registry cannot be read or written no rollout is decided (the metric
``resnetkit_registry_up`` shows it), and the time it was away does not count against a
step's progress deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import importlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from resnetkit.errors import (
    Conflict,
    ModelNotServed,
    RegistryError,
    RegistryUnavailable,
    ResNetKitError,
)
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.pool import ModelPool
from resnetkit.serve.rollout import RolloutConfig, StepStats, Verdict, analyse
from resnetkit.serve.router import RolloutRouter, RoutingPlan

if TYPE_CHECKING:
    from resnetkit.registry import RegistryStore
    from resnetkit.registry import rollouts as db
else:  # SQLAlchemy is loaded with the first registry model, not by serving a file

    class _LazyRollouts:
        def __getattr__(self, name: str) -> Any:
            return getattr(importlib.import_module("resnetkit.registry.rollouts"), name)

    db = _LazyRollouts()

__all__ = ["RolloutLoop", "answer_share", "mirrored_share", "routing_plan"]

log = logging.getLogger("resnetkit.serve")


def _utc(text: str) -> float:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def routing_plan(record: db.RolloutRecord) -> RoutingPlan | None:
    """What the router needs of ``record``: None unless it is progressing."""
    if not record.active:
        return None
    cfg = RolloutConfig.from_mapping(record.config)
    return RoutingPlan(
        rollout_id=record.id,
        step=record.step,
        canary_version=str(record.canary_version),
        canary_weight=record.canary_weight,
        shadow=cfg.shadow,
        mirror_fraction=cfg.mirror_fraction,
        sticky_header=cfg.sticky_header,
    )


class RolloutLoop:
    """Follows every served registry model's rollout and drives it; one per server."""

    def __init__(
        self,
        pool: ModelPool,
        metrics: ServerMetrics,
        router: RolloutRouter,
        *,
        registry: str | None,
        poll_s: float = 1.0,
        replica: str | None = None,
        drain_s: float = 5.0,
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.router = router
        self.registry = registry
        self.poll_s = poll_s
        self.drain_s = drain_s  # a version leaving service gets this long for its requests
        self.replica = replica or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.records: dict[str, db.RolloutRecord] = {}
        self._baseline: dict[tuple[int, int], StepStats] = {}
        self._last_analysis: dict[int, float] = {}
        self._applied: set[int] = set()
        self._followed: set[int] = set()  # rollouts this replica saw progressing
        self._loading: set[str] = set()
        self._store: RegistryStore | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # Wall-clock spans (start, end or None while it lasts) when the registry could not
        # be read or written: no rollout decides then, and a step's progress deadline does
        # not count them (the step could not be measured).
        self._outages: list[tuple[float, float | None]] = []

    def _follow(self, name: str, record: db.RolloutRecord) -> None:
        """``record`` is the latest state of ``name``'s rollout: route by it from now on."""
        self.records[name] = record
        self.router.follow(name, routing_plan(record))

    # -- the registry ---------------------------------------------------------------------

    def store(self) -> RegistryStore:
        """The registry (opened once, on first use)."""
        if self._store is None:
            from resnetkit.registry import open_registry

            self._store = open_registry(self.registry, create=False)
        return self._store

    @property
    def registry_down(self) -> bool:
        """Whether the last call to the registry failed (rollouts are paused meanwhile)."""
        return bool(self._outages) and self._outages[-1][1] is None

    def _registry_failed(self, operation: str, exc: RegistryError) -> None:
        self.metrics.set_registry_up(False, operation)
        if not self.registry_down:
            self._outages.append((time.time(), None))
            log.warning("registry unreachable, rollouts paused until it returns: %s", exc)

    def _registry_ok(self) -> None:
        self.metrics.set_registry_up(True)
        if self.registry_down:
            start, _ = self._outages.pop()
            self._outages.append((start, time.time()))
            self._outages = self._outages[-100:]
            # The first analysis after an outage waits a whole interval of fresh data.
            now = time.monotonic()
            self._last_analysis = dict.fromkeys(self._last_analysis, now)
            log.warning(
                "registry reachable again after %.1f s; rollouts resume", time.time() - start
            )

    def _outage_s(self, since: float) -> float:
        """Seconds since ``since`` (wall clock) that the registry was unreachable."""
        now = time.time()
        return sum(
            max(0.0, min(end if end is not None else now, now) - max(start, since))
            for start, end in self._outages
        )

    def close(self) -> None:
        """Give back every lease this replica holds and close the registry."""
        if self._store is None:
            return
        if self.registry_down:  # each release would wait out the timeout; the leases expire
            self._store.close()
            return
        for name in self.records:
            with contextlib.suppress(ResNetKitError):
                db.release_lease(self._store, name, self.replica)
        self._store.close()

    # -- the loop -------------------------------------------------------------------------

    async def run(self) -> None:
        """Follow every served registry model's rollout until cancelled."""
        while True:
            try:
                consulted = [await self.sync(name) for name in list(self.pool.models)]
                if any(consulted):  # a whole round read and wrote: the registry is back
                    self._registry_ok()
            except asyncio.CancelledError:
                raise
            except RegistryError as exc:  # paused: nothing is decided on what was not saved
                self._registry_failed("rollout", exc)
            except Exception:  # the loop must outlive a database hiccup
                log.exception("rollout sync failed; retrying")
            await asyncio.sleep(self.poll_s)

    async def sync(self, name: str) -> bool:
        """One round for ``name``: read the rollout, apply it, measure, maybe analyse.

        Returns:
            Whether the round used the registry (False for a model served from a file).
        """
        served = self.pool.models.get(name, {}).values()
        if not any(s.loaded.identity.version is not None for s in served):
            return False  # served from a file: no registry, no rollouts
        record = await asyncio.to_thread(db.latest_rollout, self.store(), name)
        if record is None:
            return True
        self._follow(name, record)
        if not record.active:
            await self._apply_outcome(name, record)
            return True
        self._followed.add(record.id)
        cfg = RolloutConfig.from_mapping(record.config)
        self.metrics.set_rollout(
            name, canary_weight=answer_share(record, cfg), step=record.step,
            mirrored_share=mirrored_share(cfg),
        )  # fmt: skip
        if not await self._ensure_canary(name, record):
            return True
        counts = self.router.step_counts(name)
        if counts is not None:
            await asyncio.to_thread(
                db.write_stats, self.store(), record.id, self.replica, record.step,
                counts.to_dict(),
            )  # fmt: skip
        leader = await asyncio.to_thread(
            db.acquire_lease, self.store(), name, self.replica, 1.5 * cfg.interval_s
        )
        if leader:
            await self._maybe_analyse(name, record, cfg)
        return True

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _ensure_canary(self, name: str, record: db.RolloutRecord) -> bool:
        """True once the canary version is loaded; starts loading it otherwise."""
        version = str(record.canary_version)
        served = self.pool.models.get(name, {}).get(version)
        if served is not None:
            return served.ready
        key = f"{name}:{version}"
        if key not in self._loading:
            self._loading.add(key)
            self._spawn(self._load_canary(name, record))
        return False

    async def _load_canary(self, name: str, record: db.RolloutRecord) -> None:
        key = f"{name}:{record.canary_version}"
        try:
            await self.pool.load(key, name=name)
        except RegistryUnavailable as exc:  # not the canary's fault: the next round retries
            self._registry_failed("rollout", exc)
        except ResNetKitError as exc:
            log.error("rollout of %s: the canary %s cannot be loaded: %s", name, key, exc)
            await self._finish(
                name, record, "rolled_back", f"the canary {key} cannot be loaded: {exc}", []
            )
        finally:
            self._loading.discard(key)

    # -- analysis and decisions -------------------------------------------------------------

    async def _maybe_analyse(self, name: str, record: db.RolloutRecord, cfg: RolloutConfig) -> None:
        now = time.monotonic()
        last = self._last_analysis.setdefault(record.id, now)
        if now - last < cfg.interval_s:
            return
        self._last_analysis[record.id] = now
        parts = await asyncio.to_thread(db.read_stats, self.store(), record.id, record.step)
        total = StepStats.total([StepStats.from_dict(p) for p in parts])
        base = self._baseline.get((record.id, record.step), StepStats())
        verdict = analyse(total.combine(base, -1), cfg)
        await self._act(name, record, cfg, verdict, total)

    async def _act(
        self,
        name: str,
        record: db.RolloutRecord,
        cfg: RolloutConfig,
        verdict: Verdict,
        total: StepStats,
    ) -> None:
        checks = [c.to_dict() for c in verdict.checks]
        for check in verdict.checks:
            if check.value is not None and check.passed is not None:
                self.metrics.set_rollout_check(
                    name, check.name, value=check.value, passed=check.passed
                )
        if verdict.outcome == "inconclusive":
            started = _utc(record.step_started_at)
            waited = time.time() - started - self._outage_s(started)
            if waited > cfg.progress_deadline_s:
                reason = f"no verdict after {waited:.0f} s at step {record.step}: {verdict.reason}"
                await self._finish(name, record, "rolled_back", reason, checks)
            return
        self._baseline[(record.id, record.step)] = total
        if verdict.outcome == "pass":
            await self._advance(name, record, cfg, checks)
            return
        failures = record.failures + 1
        if failures >= cfg.failure_limit:
            await self._finish(name, record, "rolled_back", verdict.reason, checks)
            return
        await self._update(
            record, {"failures": failures, "checks": checks, "reason": verdict.reason},
            ("check_failed", {"failures": failures, "reason": verdict.reason, "checks": checks}),
        )  # fmt: skip

    async def _advance(
        self, name: str, record: db.RolloutRecord, cfg: RolloutConfig, checks: list[Any]
    ) -> None:
        if record.step + 1 >= len(cfg.steps):
            summary = (
                f"canary {name}:{record.canary_version} passed every step "
                f"({', '.join(f'{s}%' for s in cfg.steps)}): "
                + "; ".join(_describe(c) for c in checks if c["value"] is not None)
            )
            await self._finish(name, record, "promoted", summary, checks)
            return
        weight = 0.0 if cfg.shadow else cfg.weight(record.step + 1)
        changes = {
            "step": record.step + 1, "canary_weight": weight, "checks": checks,
            "step_started_at": db.utc_now(), "reason": f"step {record.step + 1}: {weight:g}%",
        }  # fmt: skip
        await self._update(
            record, changes, ("step", {"step": record.step + 1, "weight": weight, "checks": checks})
        )

    async def _update(
        self,
        record: db.RolloutRecord,
        changes: dict[str, Any],
        event: tuple[str, dict[str, Any]],
        move_alias: tuple[str, int, str] | None = None,
        actor: str | None = None,
    ) -> db.RolloutRecord | None:
        try:
            updated = await asyncio.to_thread(
                db.update_rollout, self.store(), record, changes=changes, event=event,
                actor=actor or f"resnetkit-rollout ({self.replica})", move_alias=move_alias,
            )  # fmt: skip
        except db.RolloutConflict:
            return None  # someone else acted first; the next round reads the new state
        self._follow(record.name, updated)
        return updated

    async def _finish(
        self,
        name: str,
        record: db.RolloutRecord,
        outcome: str,
        reason: str,
        checks: list[Any],
        actor: str | None = None,
    ) -> db.RolloutRecord | None:
        cfg = RolloutConfig.from_mapping(record.config)
        weight = 100.0 if outcome == "promoted" else 0.0
        changes = {
            "state": outcome, "canary_weight": weight, "reason": reason, "checks": checks,
            "finished_at": db.utc_now(),
        }  # fmt: skip
        move = (cfg.alias, record.canary_version, reason[:2000]) if outcome == "promoted" else None
        kind = {"promoted": "promote", "rolled_back": "rollback", "aborted": "abort"}[outcome]
        updated = await self._update(
            record, changes, (kind, {"reason": reason, "checks": checks}), move, actor
        )
        if updated is not None:
            self.metrics.rollout_finished(name, outcome)
            log.warning("rollout of %s %s: %s", name, outcome.replace("_", " "), reason)
            await self._apply_outcome(name, updated)
        return updated

    async def _apply_outcome(self, name: str, record: db.RolloutRecord) -> None:
        """Serve what a finished rollout decided (once per rollout, on every replica that
        followed it; one that started later serves what its command line or admin asked)."""
        if record.id in self._applied:
            return
        self._applied.add(record.id)
        if record.id not in self._followed:
            return
        versions = self.pool.models.get(name, {})
        canary, stable = str(record.canary_version), str(record.stable_version)
        if record.state == "promoted":
            if canary not in versions:
                await self.pool.load(f"{name}:{canary}", name=name)
            self.pool.set_default(name, canary)
            leaving = stable
        else:
            leaving = canary
        if leaving in self.pool.models.get(name, {}) and len(self.pool.models[name]) > 1:
            # No new request is routed to it any more; the ones that already were (still
            # decoding, or queued) finish on it before it is unloaded.
            self._spawn(self._unload_later(name, leaving))

    async def _unload_later(self, name: str, version: str) -> None:
        await asyncio.sleep(self.drain_s)
        with contextlib.suppress(ModelNotServed):
            await self.pool.unload(name, version)

    # -- the API ----------------------------------------------------------------------------

    async def start(
        self, name: str, canary_version: int, cfg: RolloutConfig, actor: str
    ) -> db.RolloutRecord:
        """Start a rollout of ``name`` from the version it serves to ``canary_version``.

        Raises:
            ModelNotServed: the model is not served here, or not from the registry.
            Conflict: a rollout is already progressing, or the canary is the stable version.
            RegistryError: the version does not exist.
        """
        stable = self.pool.get(name)
        if stable.loaded.identity.version is None:
            raise ModelNotServed(
                f"{name} is served from a file, not a registry version; a rollout moves "
                "registry aliases, so serve it as name@alias"
            )
        try:
            record = await asyncio.to_thread(
                db.start_rollout, self.store(), name,
                stable_version=stable.loaded.identity.version, canary_version=canary_version,
                config=cfg.to_dict(), first_weight=0.0 if cfg.shadow else cfg.weight(0),
                actor=actor,
            )  # fmt: skip
        except db.RolloutRefused as exc:
            raise Conflict(str(exc)) from exc
        self._follow(name, record)
        await self.sync(name)
        return self.records[name]

    async def decide(self, name: str, outcome: str, actor: str) -> db.RolloutRecord:
        """Promote or abort the progressing rollout of ``name`` by hand.

        Raises:
            ModelNotServed: no rollout of ``name`` is progressing.
        """
        record = await asyncio.to_thread(db.active_rollout, self.store(), name)
        if record is None:
            raise ModelNotServed(f"{name} has no rollout in progress")
        reason = f"{outcome.replace('_', ' ')} by hand ({actor})"
        done = await self._finish(name, record, outcome, reason, record.checks, actor=actor)
        if done is None:
            raise RegistryError(f"the rollout of {name} changed meanwhile; try again")
        return done

    async def describe(self, name: str) -> dict[str, Any]:
        """The latest rollout of ``name`` with its audit log, as plain data."""
        record = await asyncio.to_thread(db.latest_rollout, self.store(), name)
        if record is None:
            raise ModelNotServed(f"{name} has never had a rollout")
        events = await asyncio.to_thread(db.list_rollout_events, self.store(), record.id)
        cfg = RolloutConfig.from_mapping(record.config)
        return {
            **record.to_dict(),
            "model": name,
            "steps": list(cfg.steps),
            "mode": "shadow" if cfg.shadow else "split",
            # percent, as canary_weight: the canary's share of answers, and of requests it
            # also runs in the background (for comparison; their answers are stable's)
            "canary_weight": 100 * answer_share(record, cfg),
            "mirrored_percent": 100 * mirrored_share(cfg) if record.active else 0.0,
            "events": [e.to_dict() for e in events],
        }


def answer_share(record: db.RolloutRecord, cfg: RolloutConfig) -> float:
    """The share of answers (0 to 1) the canary of ``record`` gives: none in shadow mode."""
    return 0.0 if cfg.shadow and record.active else record.canary_weight / 100


def mirrored_share(cfg: RolloutConfig) -> float:
    """The share of stable's requests (0 to 1) also run on the canary in the background."""
    return 1.0 if cfg.shadow else cfg.mirror_fraction


def _describe(check: Mapping[str, Any]) -> str:
    threshold = check.get("threshold")
    limit = "" if threshold is None else f" (threshold {threshold:.4g})"
    return f"{check['name']} {check['value']:.4g}{limit}"
