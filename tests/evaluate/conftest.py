"""Evaluation test fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.evaluate.helpers import one_thread


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_thread():
        yield
