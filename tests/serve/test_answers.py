"""The feedback memory: the same answers as a plain dict with oldest-first eviction, in
arrays allocated once."""

from __future__ import annotations

import collections
import tracemalloc

from hypothesis import given, settings
from hypothesis import strategies as st

from resnetkit.serve.answers import AnswerMemory

_IDS = st.sampled_from([f"req-{i}" for i in range(40)])
_CALLS = st.lists(
    st.tuples(
        st.lists(_IDS, min_size=1, max_size=2, unique=True),
        st.sampled_from(["served", "stable", "canary"]),
        st.sampled_from(["1", "2"]),
        st.integers(0, 9),
    ),
    max_size=120,
)


class _Reference:
    """The memory's meaning, written plainly: request id -> record, records oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.by_id: dict[str, dict[str, object]] = {}
        self.records: collections.deque[dict[str, object]] = collections.deque()

    def remember(self, ids: list[str], role: str, version: str, top1: int) -> None:
        record = next((self.by_id[i] for i in ids if i in self.by_id), None)
        if record is None:
            if len(self.records) == self.capacity:
                old = self.records.popleft()
                for i in old["ids"]:  # type: ignore[attr-defined]
                    del self.by_id[i]
            record = {"ids": [], "answers": {}}
            self.records.append(record)
        for i in ids:
            held: list[str] = record["ids"]  # type: ignore[assignment]
            if i in held or len(held) == 2:
                continue
            if i in self.by_id:  # another record's id moves here
                other: list[str] = self.by_id[i]["ids"]  # type: ignore[assignment]
                other.remove(i)
            held.append(i)
            self.by_id[i] = record
        record["answers"][role] = (version, top1)  # type: ignore[index]

    def answers(self, request_id: str) -> list[tuple[str, str, int]] | None:
        record = self.by_id.get(request_id)
        if record is None:
            return None
        found: dict[str, tuple[str, int]] = record["answers"]  # type: ignore[assignment]
        return [(r, *found[r]) for r in ("served", "stable", "canary") if r in found]


@settings(max_examples=150, deadline=None)
@given(capacity=st.integers(1, 12), calls=_CALLS)
def test_the_memory_answers_as_a_dict_with_oldest_first_eviction(
    capacity: int, calls: list[tuple[list[str], str, str, int]]
) -> None:
    memory, reference = AnswerMemory(capacity), _Reference(capacity)
    for ids, role, version, top1 in calls:
        memory.remember(ids, "fashion", None, role, version, top1)
        reference.remember(ids, role, version, top1)
    for i in range(40):
        record = memory.find(f"req-{i}")
        expected = reference.answers(f"req-{i}")
        assert (None if record is None else memory.answers(record)) == expected, f"req-{i}"


def test_a_record_keeps_its_model_rollout_and_label() -> None:
    memory = AnswerMemory(4)
    record = memory.remember(["a", "client-a"], "fashion", (7, 2), "stable", "3", 5)
    assert memory.find("client-a") == record == memory.find("a")
    assert (memory.name(record), memory.rollout(record), memory.label(record)) == (
        "fashion", (7, 2), None,
    )  # fmt: skip
    memory.set_label(record, 4)
    memory.set_counted(record, True)
    assert memory.label(record) == 4 and memory.counted(record)
    other = memory.remember(["b"], "digits", None, "served", "1", 0)
    assert memory.rollout(other) is None and memory.label(other) is None


def test_memory_stays_flat_while_the_memory_fills() -> None:
    memory = AnswerMemory(20_000)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(30_000):
            memory.remember([f"{i:032x}", f"client-{i}"], "fashion", (1, 0), "canary", "2", 3)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64_000, f"{grown} bytes for 30,000 requests"
    assert memory.find(f"{29_999:032x}") is not None and memory.find(f"{0:032x}") is None
    assert memory.nbytes < 160 * 20_000  # under 160 bytes a request, allocated at start
