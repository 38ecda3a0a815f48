"""The precision policy: ``auto`` never picks an emulated bf16."""

from __future__ import annotations

import pytest
import torch

from resnetkit.errors import ConfigError
from resnetkit.evaluate import precision


@pytest.mark.parametrize("native", [True, False])
def test_auto_on_a_cpu_is_bf16_only_with_native_bf16(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: native)
    expected = torch.bfloat16 if native else None
    assert precision.resolve_precision("auto", torch.device("cpu")) is expected


def test_bf16_asked_for_is_kept_with_a_warning_where_it_is_emulated(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.resolve_precision("bf16", torch.device("cpu")) is torch.bfloat16
    assert "without native bf16" in caplog.text


def test_the_probe_answers_on_this_machine() -> None:
    precision.cpu_has_fast_bf16.cache_clear()
    assert isinstance(precision.cpu_has_fast_bf16(), bool)


@pytest.mark.parametrize("limit", ["AVX2", "avx512_core_vnni", "SSE41"])
def test_a_onednn_isa_cap_below_bf16_makes_auto_float32(
    limit: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # How an AVX2-only machine is emulated on a newer one: auto must then pick float32 there
    # too, not the emulated bf16 that is a hundred times slower.
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    precision.cpu_has_fast_bf16.cache_clear()
    try:
        assert precision.cpu_has_fast_bf16() is False
        assert precision.resolve_precision("auto", torch.device("cpu")) is None
    finally:
        precision.cpu_has_fast_bf16.cache_clear()


def test_a_onednn_isa_cap_that_allows_bf16_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    precision.cpu_has_fast_bf16.cache_clear()
    native = precision.cpu_has_fast_bf16()
    for limit in ("ALL", "avx512_core_amx"):
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
        precision.cpu_has_fast_bf16.cache_clear()
        assert precision.cpu_has_fast_bf16() is native
    precision.cpu_has_fast_bf16.cache_clear()


def test_fp32_fp16_and_unknown_names() -> None:
    cpu = torch.device("cpu")
    assert precision.resolve_precision("fp32", cpu) is None
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        precision.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="not known"):
        precision.resolve_precision("int4", cpu)
