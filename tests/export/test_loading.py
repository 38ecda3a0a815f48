"""load_model_ref: references no file system could hold are one clear error, not an OSError."""

from __future__ import annotations

import pytest

from resnetkit.errors import ConfigError
from resnetkit.export import load_model_ref


@pytest.mark.parametrize(
    ("ref", "reason"),
    [
        ("a" * 5000, "File name too long"),
        ("model\x00.onnx", "embedded null byte"),
        ("&\x93\udd79" * 200, ""),  # what a fuzzer sent to POST /v1/admin/models
    ],
)
def test_an_impossible_path_is_a_config_error(ref: str, reason: str) -> None:
    with pytest.raises(ConfigError, match="neither a registry reference") as caught:
        load_model_ref(ref)
    assert reason in str(caught.value)
