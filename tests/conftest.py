"""Session-wide settings for every test: a private cache folder for the model loader."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


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
