"""Session-wide settings for every test: a private cache folder for the model loader, and the
slow set-ups that start with the session (tests/early.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests import early


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Checkouts and cached exports go to a temporary folder, never ~/.cache; servers started
    as subprocesses inherit it."""
    previous = os.environ.get("RESNETKIT_CACHE")
    os.environ["RESNETKIT_CACHE"] = str(tmp_path_factory.mktemp("resnetkit-cache"))
    yield
    if previous is None:
        os.environ.pop("RESNETKIT_CACHE", None)
    else:
        os.environ["RESNETKIT_CACHE"] = previous


@pytest.fixture(scope="session", autouse=True)
def _slow_setup_starts_early(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    _private_model_cache: None,
) -> Iterator[None]:
    """Each selected module's ``start_early`` (tests/early.py) before the first test runs, so
    its minute of image building or pip installing overlaps the tests before it."""
    # In the order they will run: the first to need its work gets it first.
    modules = dict.fromkeys(getattr(item, "module", None) for item in request.session.items)
    for module in modules:
        start_early = getattr(module, "start_early", None)
        if start_early is not None:
            start_early(tmp_path_factory)
    yield
    early.cancel_pending()
