"""Per-request rollout routing: which version answers, what each version did, feedback.

Everything here runs on the request path, in memory: no registry, no I/O, no event loop.
The control loop (:mod:`resnetkit.serve.rollout_loop`) tells the router what to route by
through one small interface, and reads back what it counted:

- :meth:`RolloutRouter.follow` hands it the :class:`RoutingPlan` of a model's progressing
  rollout (canary version, weight, mode, step), or ``None`` when none progresses;
- :meth:`RolloutRouter.step_counts` gives this replica's counts of the current step, which
  the loop writes to the registry for the analysis.

During a rollout a request goes to stable or canary by the plan's canary weight (sticky by a
request header if configured), or, in shadow mode, is answered by stable and also run on the
canary in the background; in split mode a share of each version's requests is mirrored to
the other, in the background, so both are compared at every step. The router counts each
version's answers, errors, latency and confidence, and the top-1 agreement of mirrored runs.

Feedback (``POST /v1/feedback``) is one label per request: the same label again changes
nothing, a different one replaces the first in the counts (the answer says which it replaced).
What a request got is kept for the last :data:`FEEDBACK_MEMORY` requests in arrays allocated
when the router is made (:class:`resnetkit.serve.answers.AnswerMemory`, about 6 MB), so the
server's memory does not grow as they fill.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from collections.abc import Mapping, Sequence
from typing import Any

from resnetkit.errors import InvalidInput, NotFound
from resnetkit.serve.answers import AnswerMemory
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.pool import ModelPool, ServedModel
from resnetkit.serve.rollout import StepStats

__all__ = ["FEEDBACK_MEMORY", "Fault", "RolloutRouter", "Route", "RoutingPlan"]

FEEDBACK_MEMORY = 50_000  # request ids remembered for POST /v1/feedback


@dataclasses.dataclass
class Fault:
    """Injected faults of one served version (chaos testing, set by the admin API)."""

    delay_ms: float = 0.0
    error_rate: float = 0.0

    def __post_init__(self) -> None:
        if self.delay_ms < 0 or not 0 <= self.error_rate <= 1:
            raise InvalidInput("fault: delay_ms must be >= 0 and error_rate in [0, 1]")


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a request goes: the version that answers, its role, and a version that runs the
    same request in the background (shadow mode, or a mirrored sample), for comparison."""

    primary: ServedModel
    role: str | None = None  # "stable" or "canary" while a rollout runs
    shadow: ServedModel | None = None

    @property
    def shadow_role(self) -> str:
        """The role of the shadow: the other one."""
        return "stable" if self.role == "canary" else "canary"


@dataclasses.dataclass(frozen=True)
class RoutingPlan:
    """What routing needs of one progressing rollout; made by the control loop each time
    it reads or changes the rollout, so a request never parses the rollout's settings."""

    rollout_id: int
    step: int
    canary_version: str
    canary_weight: float  # percent of requests the canary answers (0 in shadow mode)
    shadow: bool = False
    mirror_fraction: float = 0.0  # split mode: share of requests also run on the other one
    sticky_header: str = ""
    # (rollout id, step): the window a request's counts belong to; one tuple per plan,
    # shared by every request remembered under it.
    key: tuple[int, int] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.rollout_id, self.step))


class RolloutRouter:
    """Routes requests during rollouts and counts what each version did; one per server."""

    def __init__(
        self, pool: ModelPool, metrics: ServerMetrics, *, feedback_memory: int = FEEDBACK_MEMORY
    ) -> None:
        self.pool = pool
        self.metrics = metrics
        self.feedback_memory = feedback_memory  # request ids kept for feedback
        self._plans: dict[str, RoutingPlan] = {}
        self._stats: dict[str, tuple[tuple[int, int], StepStats]] = {}
        # Request id -> what it got, the oldest forgotten first: arrays allocated once.
        self._answers = AnswerMemory(feedback_memory)
        self._rng = random.Random()

    # -- the control loop's interface -------------------------------------------------------

    def follow(self, name: str, plan: RoutingPlan | None) -> None:
        """Route ``name`` by ``plan`` from now on (None: no rollout progresses)."""
        if plan is None:
            self._plans.pop(name, None)
        else:
            self._plans[name] = plan

    def plan(self, name: str) -> RoutingPlan | None:
        """The plan ``name`` is routed by (None without a progressing rollout)."""
        return self._plans.get(name)

    def step_counts(self, name: str) -> StepStats | None:
        """This replica's counts in the current step of ``name``'s rollout (None: none
        progresses); the live object, which later requests keep adding to."""
        current = self._step_stats(name)
        return None if current is None else current[1]

    def _step_stats(self, name: str) -> tuple[RoutingPlan, StepStats] | None:
        plan = self._plans.get(name)
        if plan is None:
            return None
        key, stats = self._stats.get(name, ((-1, -1), StepStats()))
        if key != plan.key:
            stats = StepStats()
            self._stats[name] = (plan.key, stats)
        return plan, stats

    # -- routing and measurement ------------------------------------------------------------

    def route(self, name: str, headers: Mapping[str, str]) -> Route:
        """Where a request for ``name`` goes now.

        Raises:
            ModelNotServed, NotReady: as :meth:`ModelPool.get`.
        """
        stable = self.pool.get(name)
        plan = self._plans.get(name)
        if plan is None:
            return Route(stable)
        canary = self.pool.models.get(name, {}).get(plan.canary_version)
        if canary is None or not canary.ready or canary is stable:
            return Route(stable, "stable")
        if plan.shadow:
            return Route(stable, "stable", canary)
        sticky = headers.get(plan.sticky_header) if plan.sticky_header else None
        if sticky:
            digest = hashlib.sha256(f"{plan.rollout_id}:{sticky}".encode()).digest()
            share = int.from_bytes(digest[:8], "big") / 2**64
        else:
            share = self._rng.random()
        # A share of each version's requests also runs on the other one, in the background:
        # both versions are measured and compared at every step, 100% included.
        mirrored = self._rng.random() < plan.mirror_fraction
        if share < plan.canary_weight / 100:
            return Route(canary, "canary", stable if mirrored else None)
        return Route(stable, "stable", canary if mirrored else None)

    def record(
        self, name: str, role: str | None, ok: bool, latency_s: float, confidence: float | None
    ) -> None:
        """Count one answer (or failure) of a version in the current step."""
        current = self._step_stats(name)
        if role is None or current is None:
            return
        current[1].role(role).record(ok, latency_s, confidence)

    def compare(self, name: str, stable_top1: int, canary_top1: int) -> None:
        """Count whether both versions gave the same top-1 on one request."""
        current = self._step_stats(name)
        if current is not None:
            current[1].compared += 1
            current[1].agree += int(stable_top1 == canary_top1)

    # -- feedback ---------------------------------------------------------------------------

    def remember(
        self,
        request_ids: str | Sequence[str],
        name: str,
        role: str | None,
        version: str,
        top1: int,
    ) -> None:
        """Keep what a request got, for a later ``POST /v1/feedback``.

        Args:
            request_ids: every id the request is known by (the server's request id, the
                id a V2 client sent): feedback under any of them scores the same answer.
        """
        ids = [request_ids] if isinstance(request_ids, str) else request_ids
        plan = self._plans.get(name)
        rollout = None if plan is None else plan.key
        self._answers.remember(ids, name, rollout, role or "served", version, top1)

    def answered_by(self, request_id: str) -> tuple[str, str]:
        """The model and the version whose answer the client of ``request_id`` saw.

        Raises:
            NotFound: an unknown (or forgotten) request id.
        """
        record = self._answers.find(request_id)
        if record is None:
            raise NotFound(f"request id {request_id[:64]!r} is unknown here")
        answers = self._answers.answers(record)
        return self._answers.name(record), answers[0][1] if answers else ""

    def feedback(self, request_id: str, label: str | int) -> dict[str, Any]:
        """Score the versions that answered ``request_id`` against the true ``label``.

        One label per request: the same label again is not counted again (``"repeated":
        true``); a different one takes the first one's place in every count (``"replaced"``:
        the index of the label it replaced).

        Raises:
            NotFound: an unknown request id (404).
            InvalidInput: an unknown label.
        """
        record = self._answers.find(request_id)
        if record is None:
            raise NotFound(
                f"request id {request_id[:64]!r} is unknown here: it is older than the last "
                f"{self.feedback_memory:,} requests, or another replica answered it"
            )
        memory = self._answers
        served = self.pool.get(memory.name(record))
        index = _label_index(label, served.labels)
        scores = {role: top1 == index for role, _, top1 in memory.answers(record)}
        answer: dict[str, Any] = {"request_id": request_id, "label": index, "correct": scores}
        previous = memory.label(record)
        if previous == index:
            return {**answer, "repeated": True}
        if previous is not None:
            self._count_feedback(record, previous, -1)
            answer["replaced"] = previous
        memory.set_label(record, index)
        self._count_feedback(record, index, 1)
        return answer

    def _count_feedback(self, record: int, label: int, sign: int) -> None:
        """Add (``sign=1``) or take back (-1) one label of a request in every count: the
        metrics (a retraction is a counter of its own) and the rollout step it belongs to."""
        memory = self._answers
        name = memory.name(record)
        current = self._step_stats(name)
        in_step = current is not None and memory.rollout(record) == current[0].key
        if sign < 0 and not memory.counted(record):
            in_step = False  # its step is over: that window was judged with the old label
        for role, version, top1 in memory.answers(record):
            correct = top1 == label
            if sign > 0:
                self.metrics.observe_feedback(name, version, correct)
            else:
                self.metrics.retract_feedback(name, version, correct)
            if in_step and current is not None and role in ("stable", "canary"):
                stats = current[1].role(role)
                stats.feedback_total += sign
                stats.feedback_correct += sign * int(correct)
        memory.set_counted(record, in_step and sign > 0)


def _label_index(label: str | int, labels: list[str]) -> int:
    if isinstance(label, bool):
        raise InvalidInput("label must be a class index or a class name")
    if isinstance(label, int):
        if not 0 <= label < len(labels):
            raise InvalidInput(f"label {label} is out of range: the model has {len(labels)}")
        return label
    if label in labels:
        return labels.index(label)
    raise InvalidInput(f"label {label[:64]!r} is not one of the model's classes")
