"""The server's memory of answered requests, for ``POST /v1/feedback``: fixed-size arrays.

The last ``capacity`` answered requests (50,000 by default): the model, the version and top-1
per role (``served``; ``stable`` and ``canary`` during a rollout), the rollout step, the label
once given and whether it was counted. A Python object per request would cost 240+ bytes
each and grow the process for the first 50,000 requests (the soak saw +21% RSS); these
arrays are allocated once, at start (about 6 MB for 50,000), so memory stays flat.

A request id is known by a 64-bit BLAKE2b digest of it (two ids of 50,000 collide with a
probability under 1e-10), in an open-addressing table (linear probing, backward-shift
deletion) that points at the request's record. A record takes up to :data:`IDS_PER_REQUEST`
ids (the server's and the client's). Records are reused oldest first; reusing one forgets
its ids. Model names and versions are stored once each (a list and its index).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

__all__ = ["IDS_PER_REQUEST", "ROLES", "AnswerMemory"]

ROLES = ("served", "stable", "canary")
#: The most ids one request is known by; further ones are not remembered.
IDS_PER_REQUEST = 2
_EMPTY = -1


def _digest(request_id: str) -> int:
    value = int.from_bytes(
        hashlib.blake2b(request_id.encode("utf-8", "surrogatepass"), digest_size=8).digest(),
        "little",
    )
    return value or 1  # 0 marks an unused id place


class AnswerMemory:
    """What the last ``capacity`` requests got, by request id; see the module's doc."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        # At most half full: every record's ids, twice over, rounded up to a power of two.
        self._mask = (1 << (2 * capacity * IDS_PER_REQUEST - 1).bit_length()) - 1
        self._keys = np.zeros(self._mask + 1, np.uint64)  # table place -> id digest (0: free)
        self._table = np.full(self._mask + 1, _EMPTY, np.int32)  # table place -> record
        self._ids = np.zeros((capacity, IDS_PER_REQUEST), np.uint64)  # record -> id digests
        self._model = np.zeros(capacity, np.int32)
        self._version = np.full((capacity, len(ROLES)), _EMPTY, np.int32)
        self._top1 = np.full((capacity, len(ROLES)), _EMPTY, np.int32)
        self._rollout = np.full((capacity, 2), _EMPTY, np.int64)  # (rollout id, step)
        self._label = np.full(capacity, _EMPTY, np.int32)
        self._counted = np.zeros(capacity, np.bool_)
        self._next = 0
        self._strings: list[str] = []
        self._string_index: dict[str, int] = {}

    # -- the table ------------------------------------------------------------------------

    def _place(self, digest: int) -> tuple[int, bool]:
        """Where ``digest`` is in the table (True), or the free place it would take (False)."""
        place = digest & self._mask
        keys = self._keys
        while True:
            key = int(keys[place])
            if key == digest:
                return place, True
            if key == 0:
                return place, False
            place = (place + 1) & self._mask

    def _forget(self, digest: int) -> None:
        """Take ``digest`` out of the table, shifting later entries of its probe run back."""
        place, found = self._place(digest)
        if not found:
            return
        keys, table, mask = self._keys, self._table, self._mask
        while True:
            keys[place], table[place] = 0, _EMPTY
            probe = (place + 1) & mask
            while True:
                key = int(keys[probe])
                if key == 0:
                    return
                home = key & mask
                # The entry at ``probe`` may fill the hole unless its home lies after the
                # hole (cyclically, in (place, probe]).
                if (probe - home) & mask >= (probe - place) & mask:
                    keys[place], table[place] = key, table[probe]
                    place = probe
                    break
                probe = (probe + 1) & mask

    def _intern(self, text: str) -> int:
        index = self._string_index.get(text)
        if index is None:
            index = self._string_index[text] = len(self._strings)
            self._strings.append(text)
        return index

    # -- records --------------------------------------------------------------------------

    def find(self, request_id: str) -> int | None:
        """The record of ``request_id``, or None (unknown, or forgotten)."""
        digest = _digest(request_id)
        place, found = self._place(digest)
        return int(self._table[place]) if found else None

    def remember(
        self,
        request_ids: Sequence[str],
        name: str,
        rollout: tuple[int, int] | None,
        role: str,
        version: str,
        top1: int,
    ) -> int:
        """Record the answer of the version in ``role``; the request's record.

        The first time any of ``request_ids`` is seen, the oldest record is reused for it
        (with ``name`` and ``rollout``); later calls with one of its ids add to that record.
        """
        digests = list(dict.fromkeys(_digest(i) for i in request_ids))
        record = None
        for digest in digests:
            place, found = self._place(digest)
            if found:
                record = int(self._table[place])
                break
        if record is None:
            record = self._reuse(name, rollout)
        self._add_ids(record, digests)
        column = ROLES.index(role)
        self._version[record, column] = self._intern(version)
        self._top1[record, column] = top1
        return record

    def _reuse(self, name: str, rollout: tuple[int, int] | None) -> int:
        record = self._next
        self._next = (record + 1) % self.capacity
        for value in self._ids[record].tolist():
            if value:
                self._forget(int(value))
        self._ids[record] = 0
        self._model[record] = self._intern(name)
        self._version[record] = _EMPTY
        self._top1[record] = _EMPTY
        self._rollout[record] = rollout if rollout is not None else (_EMPTY, _EMPTY)
        self._label[record] = _EMPTY
        self._counted[record] = False
        return record

    def _add_ids(self, record: int, digests: list[int]) -> None:
        held = self._ids[record].tolist()
        for digest in digests:
            if digest in held or 0 not in held:
                continue
            place, found = self._place(digest)
            if found:  # another record's id (a client reusing its id): it moves here
                self._detach(int(self._table[place]), digest)
                place, _ = self._place(digest)
            slot = held.index(0)
            held[slot] = digest
            self._ids[record, slot] = digest
            self._keys[place], self._table[place] = digest, record

    def _detach(self, record: int, digest: int) -> None:
        self._forget(digest)
        row = self._ids[record].tolist()
        self._ids[record, row.index(digest)] = 0

    def name(self, record: int) -> str:
        """The model the request was for."""
        return self._strings[int(self._model[record])]

    def rollout(self, record: int) -> tuple[int, int] | None:
        """The (rollout id, step) the request was part of, or None."""
        rollout_id, step = self._rollout[record].tolist()
        return None if rollout_id == _EMPTY else (rollout_id, step)

    def answers(self, record: int) -> list[tuple[str, str, int]]:
        """``(role, version, top-1)`` of every version that answered, served first."""
        versions, top1s = self._version[record].tolist(), self._top1[record].tolist()
        return [
            (role, self._strings[v], t)
            for role, v, t in zip(ROLES, versions, top1s, strict=True)
            if v != _EMPTY
        ]

    def label(self, record: int) -> int | None:
        """The true label given as feedback, or None."""
        value = int(self._label[record])
        return None if value == _EMPTY else value

    def set_label(self, record: int, label: int) -> None:
        self._label[record] = label

    def counted(self, record: int) -> bool:
        """Whether the label is in its rollout step's feedback counts."""
        return bool(self._counted[record])

    def set_counted(self, record: int, counted: bool) -> None:
        self._counted[record] = counted

    @property
    def nbytes(self) -> int:
        """The arrays' size in bytes (fixed at start)."""
        arrays = (self._keys, self._table, self._ids, self._model, self._version, self._top1,
                  self._rollout, self._label, self._counted)  # fmt: skip
        return sum(a.nbytes for a in arrays)
