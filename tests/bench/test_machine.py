"""Every bench names its machine first: CPU, cores, instruction sets, precision, versions."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import machine as bench_machine

ROOT = Path(__file__).resolve().parents[2]
BENCHES = sorted(p for p in (ROOT / "bench").glob("*.py") if p.name != "machine.py")


def test_the_machine_line_names_cpu_cores_isa_precision_and_versions() -> None:
    info = bench_machine.machine("bfloat16 (precision='auto')")
    line = bench_machine.describe(info)
    cpu, _ = bench_machine._cpuinfo()
    assert line.startswith(f"machine: {cpu}, {len(os.sched_getaffinity(0))} cores (")
    assert "precision bfloat16 (precision='auto')" in line
    assert f"torch {info['packages']['torch']}" in line
    assert "onnxruntime" in line
    flags = Path("/proc/cpuinfo").read_text()
    assert ("AVX2" in info["isa"]) == (" avx2" in flags)


def test_an_isa_limit_in_the_environment_is_printed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    line = bench_machine.describe(bench_machine.machine("float32"))
    assert "limited to ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2" in line


@pytest.mark.parametrize("bench", BENCHES, ids=lambda p: p.name)
def test_every_bench_prints_the_machine_line(bench: Path) -> None:
    # Each bench's main path calls describe() (and so prints the machine) before measuring.
    calls = {
        node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        for node in ast.walk(ast.parse(bench.read_text()))
        if isinstance(node, ast.Call)
    }
    assert "describe" in calls, f"{bench.name} never prints the machine line"


@pytest.mark.slow
def test_the_epoch_profile_prints_the_machine_then_each_phase(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.toml"
    recipe.write_text(
        'epochs = 3\nbatch_size = 64\nprecision = "fp32"\ntta_flip = true\n'
        '[model]\narch = "resnet9_s"\n[data]\nname = "fashion-mnist"\n'
        "[augment]\nsmall_crop = 16\nsmall_crop_epochs = 1\n"
    )
    out = tmp_path / "profile.json"
    cmd = [sys.executable, "bench/epoch_profile.py", str(recipe), "--steps", "3"]
    done = subprocess.run(
        [*cmd, "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "precision float32" in lines[0]
    for phase in ("augment", "forward", "backward", "optimizer", "conv backward"):
        assert phase in done.stdout
    assert "16x16 crops" in done.stdout and "full size" in done.stdout
    report = json.loads(out.read_text())
    kinds = report["epochs"]
    assert kinds["16x16 crops"]["epochs"] == 1 and kinds["full size"]["epochs"] == 2
    for result in kinds.values():
        phases = result["phases_ms"]
        assert phases["forward"] > 0 and phases["backward"] > 0
        # The phases and the rest add up to the measured step.
        assert sum(phases.values()) == pytest.approx(result["ms_per_step"], rel=1e-6)
        assert 0 < result["achieved_gflops"] < 10 * report["matmul_peak_gflops"]
    assert report["end_of_run_s"]["test evaluation"] > 0
