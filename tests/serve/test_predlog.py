"""PredictionLog (serve/predlog.py): sampling, record contents, rotation, crash safety."""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from PIL import Image

from resnetkit.errors import ConfigError
from resnetkit.serve.predlog import (
    MAX_QUEUED_IMAGE_BYTES,
    PredictionLog,
    PredictionRecord,
    sample_point,
)


def png_bytes(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), value).save(buf, format="PNG")
    return buf.getvalue()


IMAGE = png_bytes(200)


def record(request_id: str = "req-1", **overrides: Any) -> PredictionRecord:
    fields: dict[str, Any] = {
        "request_id": request_id,
        "model": "fashion",
        "version": 3,
        "top_k": [("sneaker", 0.91), ("sandal", 0.06)],
        "confidence": 0.91,
        "latency_ms": 12.5,
        "embedding": np.array([0.123456789, -2.0, 1e-9], dtype=np.float32),
        "image": IMAGE,
    }
    fields.update(overrides)
    return PredictionRecord(**fields)


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path`` as JSON; fails on any line that is not."""
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_the_sample_rate_is_respected_over_many_request_ids(tmp_path: Path, rate: float) -> None:
    with PredictionLog(tmp_path / "p.jsonl", sample_rate=rate) as plog:
        kept = sum(plog.should_log(f"req-{i}") for i in range(20_000))
    # 20 000 draws: the standard error of the fraction is at most 0.0036; allow 0.015.
    assert abs(kept / 20_000 - rate) <= 0.015
    if rate in (0.0, 1.0):
        assert kept == rate * 20_000


def test_replicas_with_the_same_seed_keep_the_same_requests(tmp_path: Path) -> None:
    ids = [f"req-{i}" for i in range(2_000)]
    with (
        PredictionLog(tmp_path / "a.jsonl", sample_rate=0.3, seed=7) as a,
        PredictionLog(tmp_path / "b.jsonl", sample_rate=0.3, seed=7) as b,
        PredictionLog(tmp_path / "c.jsonl", sample_rate=0.3, seed=8) as c,
    ):
        kept_a = [i for i in ids if a.should_log(i)]
        assert kept_a == [i for i in ids if b.should_log(i)]
        assert kept_a != [i for i in ids if c.should_log(i)]
    assert all(0.0 <= sample_point(i) < 1.0 for i in ids)


def test_only_sampled_requests_are_written(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionLog(path, sample_rate=0.5) as plog:
        queued = [plog.log(record(f"req-{i}")) for i in range(200)]
        expected = [f"req-{i}" for i in range(200) if plog.should_log(f"req-{i}")]
    assert sum(queued) == len(expected) > 0
    assert [line["request_id"] for line in read_lines(path)] == expected


def test_a_record_has_utc_time_top_k_and_a_rounded_embedding_but_no_image(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    before = datetime.now(timezone.utc)
    with PredictionLog(path, sample_rate=1.0) as plog:
        plog.log(record())
    (line,) = read_lines(path)
    logged_at = datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
    assert logged_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= logged_at <= datetime.now(timezone.utc)
    assert (line["request_id"], line["model"], line["version"]) == ("req-1", "fashion", "3")
    assert line["top_k"] == [
        {"label": "sneaker", "probability": 0.91},
        {"label": "sandal", "probability": 0.06},
    ]
    assert (line["confidence"], line["latency_ms"]) == (0.91, 12.5)
    assert line["embedding"] == [0.123457, -2.0, 1e-9]
    assert "image" not in line


def test_images_are_stored_as_files_named_by_content_and_referenced_from_the_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionLog(path, sample_rate=1.0, log_images=True) as plog:
        plog.log(record("with-image"))
        plog.log(record("same-image-again"))
        plog.log(record("without-image", image=None, embedding=None))
    first, again, without_image = read_lines(path)
    digest = hashlib.sha256(IMAGE).hexdigest()
    assert first["image"] == again["image"] == f"images/{digest[:2]}/{digest}.png"
    assert (path.parent / first["image"]).read_bytes() == IMAGE  # relative to the log
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [f"{digest}.png"]
    assert "image" not in without_image and "embedding" not in without_image
    assert "base64" not in path.read_text() and len(path.read_text()) < 2_000


def test_images_are_not_kept_unless_enabled(tmp_path: Path) -> None:
    with PredictionLog(tmp_path / "p.jsonl", sample_rate=1.0) as plog:
        plog.log(record())
    assert not (tmp_path / "images").exists()


def test_the_images_folder_is_bounded_and_evicts_the_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    images = [png_bytes(v) for v in range(10)]
    size = max(len(image) for image in images)
    with PredictionLog(path, sample_rate=1.0, log_images=True, max_image_bytes=3 * size) as plog:
        for i, image in enumerate(images):
            plog.log(record(f"req-{i}", image=image))
    lines = read_lines(path)
    kept = [line["image"] for line in lines if (tmp_path / line["image"]).exists()]
    assert kept == [line["image"] for line in lines[-3:]]  # the newest three survive
    assert sum(p.stat().st_size for p in (tmp_path / "images").rglob("*.png")) <= 3 * size


def test_an_image_that_cannot_be_written_is_counted_and_the_line_still_written(
    tmp_path: Path,
) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionLog(path, sample_rate=1.0, log_images=True) as plog:
        (tmp_path / "images").write_bytes(b"a file where the images folder should be")
        plog.log(record("lost-image"))
        plog.flush()
        assert plog.image_write_errors == 1 and plog.write_errors == 0
    (line,) = read_lines(path)
    assert line["request_id"] == "lost-image" and "image" not in line


def test_images_waiting_in_the_queue_are_bounded(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    slow = BlockingEmbedding()
    big = bytes(MAX_QUEUED_IMAGE_BYTES // 2 + 1)
    with PredictionLog(path, sample_rate=1.0, log_images=True) as plog:
        assert plog.log(record("slow", embedding=cast(Any, slow), image=None))
        assert slow.entered.wait(5.0)  # the writer is busy: what follows waits in the queue
        assert plog.log(record("big-1", image=big)) and plog.log(record("big-2", image=big))
        assert plog.images_dropped == 1
        slow.gate.set()
    lines = {line["request_id"]: line for line in read_lines(path)}
    assert lines["big-1"]["image"].endswith(".bin") and "image" not in lines["big-2"]


def test_non_finite_numbers_become_null_so_lines_stay_strict_json(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionLog(path, sample_rate=1.0) as plog:
        plog.log(record(confidence=float("nan"), embedding=[1.0, float("inf")]))
    (line,) = read_lines(path)
    assert line["confidence"] is None and line["embedding"] == [1.0, None]


def test_the_log_rotates_by_size_and_keeps_only_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    with PredictionLog(path, sample_rate=1.0, max_bytes=2_000, backups=2) as plog:
        for i in range(100):
            plog.log(record(f"req-{i:03d}"))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["p.jsonl", "p.jsonl.1", "p.jsonl.2"]
    assert all(0 < (tmp_path / name).stat().st_size <= 2_000 for name in files)
    newest_first = [read_lines(tmp_path / name) for name in files]
    ids = [line["request_id"] for lines in reversed(newest_first) for line in lines]
    assert ids == sorted(ids) and ids[-1] == "req-099"  # oldest backups first, then path


def test_close_flushes_every_queued_record(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    plog = PredictionLog(path, sample_rate=1.0)
    for i in range(500):
        assert plog.log(record(f"req-{i}"))
    plog.close()
    plog.close()  # idempotent
    assert len(read_lines(path)) == 500 == plog.written
    assert not plog.log(record("late")) and plog.dropped == 1


def test_concurrent_logging_from_threads_writes_only_valid_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    per_thread, threads = 200, 8
    with PredictionLog(path, sample_rate=1.0, max_bytes=50_000, backups=100) as plog:

        def worker(t: int) -> None:
            for i in range(per_thread):
                plog.log(record(f"t{t}-{i}", embedding=np.full(32, t + i / 1000)))

        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    lines = [line for p in tmp_path.iterdir() for line in read_lines(p)]
    assert len(lines) + plog.dropped == per_thread * threads
    assert len({line["request_id"] for line in lines}) == len(lines)


class BlockingEmbedding:
    """An embedding whose conversion waits for a gate: holds the writer thread mid-record."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(5.0)
        return np.zeros(2, dtype=dtype)


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    slow = BlockingEmbedding()
    with PredictionLog(path, sample_rate=1.0, queue_records=2) as plog:
        assert plog.log(record("slow", embedding=cast(Any, slow)))
        assert slow.entered.wait(5.0)  # the writer holds "slow"; the queue is empty
        accepted = [plog.log(record(f"req-{i}")) for i in range(10)]
        assert accepted == [True, True] + [False] * 8
        assert plog.dropped == 8
        slow.gate.set()
    assert [line["request_id"] for line in read_lines(path)] == ["slow", "req-0", "req-1"]


def test_a_line_cut_short_by_a_crash_is_trimmed_when_the_log_reopens(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"request_id": "kept"}\n{"request_id": "cut sh')
    with PredictionLog(path, sample_rate=1.0) as plog:
        plog.log(record("after"))
    assert [line["request_id"] for line in read_lines(path)] == ["kept", "after"]


@pytest.mark.parametrize(
    "kwargs",
    [{"sample_rate": 1.5}, {"sample_rate": -0.1}, {"max_bytes": 0}, {"backups": -1}],
)
def test_settings_out_of_range_are_rejected(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        PredictionLog(tmp_path / "p.jsonl", **kwargs)


def test_a_folder_as_the_log_path_is_rejected_with_a_file_name_to_use(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="prediction log") as caught:
        PredictionLog(tmp_path)
    assert str(tmp_path / "predictions.jsonl") in str(caught.value)
    assert "model" not in str(caught.value)


def test_after_an_external_rotation_new_lines_go_to_a_new_file_at_the_path(
    tmp_path: Path,
) -> None:
    path, moved = tmp_path / "p.jsonl", tmp_path / "p.jsonl.rotated"
    with PredictionLog(path, sample_rate=1.0) as plog:
        plog.log(record("before"))
        plog.flush()
        os.rename(path, moved)  # what logrotate (or mv) does
        plog.log(record("after"))
    assert [line["request_id"] for line in read_lines(moved)] == ["before"]
    assert [line["request_id"] for line in read_lines(path)] == ["after"]


def test_reopen_switches_to_the_file_now_at_the_path(tmp_path: Path) -> None:
    path, moved = tmp_path / "p.jsonl", tmp_path / "p.jsonl.old"
    with PredictionLog(path, sample_rate=1.0) as plog:
        plog.log(record("before"))
        plog.flush()
        os.rename(path, moved)
        path.write_bytes(b"")  # the rotating tool created the new file itself
        plog.reopen()
        plog.log(record("after"))
    assert [line["request_id"] for line in read_lines(moved)] == ["before"]
    assert [line["request_id"] for line in read_lines(path)] == ["after"]


def test_an_idle_log_reopens_on_request_without_waiting_for_a_line(tmp_path: Path) -> None:
    path, moved = tmp_path / "p.jsonl", tmp_path / "p.jsonl.old"
    with PredictionLog(path, sample_rate=1.0) as plog:
        plog.log(record("before"))
        plog.flush()
        os.rename(path, moved)
        plog.reopen()
        assert wait_for(path.exists, timeout_s=10.0)  # the writer reopened, creating it


def wait_for(condition: Any, timeout_s: float) -> bool:
    """Poll ``condition`` until true or ``timeout_s`` passes (a bounded wait, not a sleep)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        threading.Event().wait(0.02)
    return bool(condition())
