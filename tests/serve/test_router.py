"""The rollout router alone, as the request path uses it: in memory, no registry, no loop.

Routing between two loaded versions, feedback and the control loop around it are tested
with real models in ``test_inference.py`` and ``test_rollout.py``; here: what the router
counts per step under the plans the loop hands it, and its bounded memory of answers.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid

import pytest

from resnetkit.errors import NotFound
from resnetkit.serve.metrics import ServerMetrics
from resnetkit.serve.pool import ModelPool, PoolSettings
from resnetkit.serve.router import FEEDBACK_MEMORY, RolloutRouter, RoutingPlan

# The memory is arrays allocated when the router is made: remembering allocates nothing that
# stays (a little slack for the interpreter's own caches).
MAX_GROWTH_BYTES = 64_000


def _router(feedback_memory: int = FEEDBACK_MEMORY) -> RolloutRouter:
    metrics = ServerMetrics()
    pool = ModelPool(PoolSettings(), metrics)
    return RolloutRouter(pool, metrics, feedback_memory=feedback_memory)


def test_counts_belong_to_the_step_the_control_loop_set() -> None:
    router = _router()
    router.record("fm", "canary", True, 0.01, 0.9)  # no rollout: nothing to count in
    assert router.step_counts("fm") is None
    router.follow("fm", RoutingPlan(rollout_id=7, step=0, canary_version="2", canary_weight=20))
    router.record("fm", "canary", True, 0.01, 0.9)
    router.record("fm", "stable", False, 0.02, None)
    router.record("fm", None, True, 0.01, 0.5)  # a request outside the rollout's roles
    router.compare("fm", 3, 3)
    router.compare("fm", 3, 4)
    counts = router.step_counts("fm")
    assert counts is not None
    assert (counts.canary.requests, counts.canary.errors, counts.canary.confidence_n) == (1, 0, 1)
    assert (counts.stable.requests, counts.stable.errors) == (1, 1)
    assert (counts.agree, counts.compared) == (1, 2)
    # The next step starts from zero; the end of the rollout stops the counting.
    router.follow("fm", RoutingPlan(rollout_id=7, step=1, canary_version="2", canary_weight=60))
    fresh = router.step_counts("fm")
    assert fresh is not None and fresh.canary.requests == 0 and fresh.compared == 0
    router.follow("fm", None)
    assert router.step_counts("fm") is None


def test_every_id_of_a_request_finds_the_same_answer() -> None:
    router = _router()
    router.remember(["server-id", "client-id"], "fm", "stable", "1", 4)
    router.remember("client-id", "fm", "canary", "2", 5)  # the mirrored run, later
    router.remember("other", "fm", None, "1", 0)
    assert router.answered_by("server-id") == router.answered_by("client-id") == ("fm", "1")
    assert router.answered_by("other") == ("fm", "1")
    with pytest.raises(NotFound, match="unknown here"):
        router.answered_by("never-seen")


def test_the_feedback_memory_forgets_the_oldest_and_does_not_grow() -> None:
    memory = FEEDBACK_MEMORY // 10  # the same structure, a tenth of the server's size
    extra = 10
    ids = [uuid.uuid4().hex for _ in range(memory + extra)]  # as the server makes them
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        router = _router(memory)
        made = tracemalloc.get_traced_memory()[0] - before
        for i, request_id in enumerate(ids):
            router.remember(request_id, "fm", None, "1", i % 10)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before - made
    finally:
        tracemalloc.stop()
    for forgotten in ids[:extra]:
        with pytest.raises(NotFound):
            router.answered_by(forgotten)
    assert router.answered_by(ids[extra]) == router.answered_by(ids[-1]) == ("fm", "1")
    assert grown < MAX_GROWTH_BYTES, f"{grown} bytes grown over {len(ids):,} requests"
    assert made < 160 * memory, f"{made / memory:.0f} bytes a request, allocated at start"
