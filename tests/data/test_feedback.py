"""Labelled production data: a real in-process server logs images and labels, the export joins
them into an ImageFolder; the export's rules on hand-written logs in the server's format."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from resnetkit.cli.main import main
from resnetkit.data.feedback import (
    MANIFEST,
    export_feedback,
    feedback_log_path,
    feedback_record,
    parse_since,
)
from resnetkit.errors import ConfigError, DataError
from tests.registry.rundirs import LABELS, make_run_dir
from tests.serve.server import png

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def write_log(
    folder: Path, rows: Sequence[tuple[str, int, int | None]], *, t0: datetime = T0
) -> Path:
    """A prediction log as the server writes it: ``(request_id, seconds after t0, label)``;
    each request has its own logged image, and a label line when ``label`` is not None.
    Rows are appended to a log already there."""
    log = folder / "predictions.jsonl"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, labels = [], []
    for rid, offset_s, label in rows:
        image = f"images/{rid}.png"
        pixels = np.full((4, 4), offset_s % 256, dtype=np.uint8)
        (folder / image).write_bytes(png(pixels))
        when = t0 + timedelta(seconds=offset_s)
        lines.append(
            {"time": _iso(when), "request_id": rid, "model": "fm", "version": "1",
             "top_k": [], "confidence": 0.5, "latency_ms": 1.0, "image": image}
        )  # fmt: skip
        if label is not None:
            labels.append(feedback_record(rid, label, LABELS[label], "fm", "1", when))
    with log.open("a") as handle:
        handle.write("".join(json.dumps(line) + "\n" for line in lines))
    with feedback_log_path(log).open("ab") as handle:
        handle.write(b"".join(labels))
    return log


def _files(root: Path) -> dict[str, set[str]]:
    return {
        split: {str(p.relative_to(root / split)) for p in (root / split).rglob("*.png")}
        for split in ("train", "holdout")
        if (root / split).is_dir()
    }


def _serve_with_image_log(run: Path, log: Path) -> Any:
    from starlette.testclient import TestClient

    from resnetkit.serve.config import ServeConfig, build_app

    config = ServeConfig(
        refs=(str(run),), threads=1, warmup_batches=1, prediction_log=log,
        prediction_log_rate=1.0, log_images=True,
    )  # fmt: skip
    app = build_app(config)
    return app.state.resnetkit, TestClient(app)


def _ready(client: Any) -> None:
    deadline = time.monotonic() + 120
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "in-process server not ready"
        time.sleep(0.05)


def test_labels_given_to_a_real_server_are_persisted_and_exported_with_their_images(
    tmp_path: Path,
) -> None:
    run = make_run_dir(tmp_path / "run")
    log = tmp_path / "logs" / "predictions.jsonl"
    state, client = _serve_with_image_log(run, log)
    rng = np.random.default_rng(0)
    with client:
        _ready(client)
        ids = []
        for i in range(6):
            pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
            answer = client.post(
                "/v1/models/run/predict", files={"file": (f"{i}.png", png(pixels))}
            )
            assert answer.status_code == 200, answer.text
            ids.append(answer.json()["request_id"])
        given = {rid: i % 2 for i, rid in enumerate(ids[:5])}  # ids[5] never gets a label
        for rid, label in given.items():
            wrong = client.post("/v1/feedback", json={"request_id": rid, "label": 4})
            assert wrong.status_code == 200 and wrong.json()["logged"] is True
            right = client.post("/v1/feedback", json={"request_id": rid, "label": LABELS[label]})
            assert right.json()["logged"] is True  # the replacement is the line that wins
        assert state.predlog is not None
        state.predlog.flush()
    lines = feedback_log_path(log).read_text().splitlines()
    assert len(lines) == 10
    assert json.loads(lines[-1])["model"] == "run"

    result = export_feedback(log, tmp_path / "export", holdout=0.4)
    files = _files(result.out)
    assert sum(len(v) for v in files.values()) == 5
    assert len(files["holdout"]) == 2
    classes = {name.split("/")[0] for names in files.values() for name in names}
    assert classes == {LABELS[0], LABELS[1]}  # label 4 was replaced everywhere
    manifest = json.loads((result.out / MANIFEST).read_text())
    assert manifest["samples"] == {"exported": 5, "train": 3, "holdout": 2}
    assert manifest["left_out"]["no_label"] == 1
    assert manifest["prediction_log"] == str(log.resolve())


def test_a_label_that_cannot_be_written_is_counted_and_the_request_still_succeeds(
    tmp_path: Path,
) -> None:
    run = make_run_dir(tmp_path / "run")
    log = tmp_path / "logs" / "predictions.jsonl"
    _, client = _serve_with_image_log(run, log)
    with client:
        _ready(client)
        feedback_log_path(log).mkdir()  # the log's place is taken: every write fails
        answer = client.post(
            "/v1/models/run/predict", files={"file": ("a.png", png(np.zeros((28, 28), np.uint8)))}
        )
        rid = answer.json()["request_id"]
        labelled = client.post("/v1/feedback", json={"request_id": rid, "label": 1})
    assert labelled.status_code == 200
    assert labelled.json()["logged"] is False


def test_the_split_is_by_time_and_the_last_label_wins(tmp_path: Path) -> None:
    rows = [(f"r{i}", 100 - i * 10, i % 3) for i in range(10)]  # logged newest first
    log = write_log(tmp_path / "logs", rows)
    with feedback_log_path(log).open("ab") as handle:  # r9 relabelled later: class 2 -> 0
        handle.write(feedback_record("r9", 0, LABELS[0], "fm", "1", T0 + timedelta(hours=1)))
    result = export_feedback(log, tmp_path / "out", holdout=0.2)
    files = _files(result.out)
    holdout_ids = {Path(name).stem for name in files["holdout"]}
    assert holdout_ids == {"r0", "r1"}  # the newest predictions (offsets 100 and 90)
    assert f"{LABELS[0]}/r9.png" in files["train"]
    manifest = result.manifest
    assert manifest["counts"]["holdout"] == {LABELS[0]: 1, LABELS[1]: 1}
    assert manifest["time_range"]["holdout"]["last"] == _iso(T0 + timedelta(seconds=100))


def test_since_keeps_only_newer_requests_and_accepts_a_duration() -> None:
    assert parse_since("2026-01-01T12:00:30Z") == T0 + timedelta(seconds=30)
    assert parse_since("2h", now=T0) == T0 - timedelta(hours=2)
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_since("yesterday")


def test_since_filters_and_too_few_samples_write_nothing(tmp_path: Path) -> None:
    log = write_log(tmp_path / "logs", [(f"r{i}", i, 1) for i in range(5)])
    result = export_feedback(log, tmp_path / "a", since=T0 + timedelta(seconds=3), holdout=0)
    assert result.manifest["samples"] == {"exported": 2, "train": 2, "holdout": 0}
    with pytest.raises(DataError, match="need at least 10"):
        export_feedback(log, tmp_path / "b", min_samples=10)
    assert not (tmp_path / "b").exists()


def test_a_failure_while_writing_leaves_no_partial_folder(tmp_path: Path) -> None:
    log = write_log(tmp_path / "logs", [(f"r{i}", i, 1) for i in range(5)])

    def interrupted(stage: str, done: int, total: int) -> None:
        if stage == "write":  # every image copied, the manifest not yet: Ctrl-C
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_feedback(log, tmp_path / "out", progress=interrupted)
    assert list(tmp_path.iterdir()) == [tmp_path / "logs"]  # no DIR, no temporary folder


def test_bad_arguments_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = write_log(tmp_path / "logs", [("r0", 0, 1), ("r1", 1, 2)])
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    cases = [
        (["--log", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o")], "not found"),
        (["--log", str(log), "--out", str(tmp_path / "used")], "not empty"),
        (["--log", str(log), "--out", str(tmp_path / "o"), "--holdout", "1"], "--holdout"),
        (["--log", str(log), "--out", str(tmp_path / "o"), "--since", "soon"], "--since"),
    ]
    for argv, message in cases:
        assert main(["data", "export-feedback", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert main(["data", "export-feedback", "--log", str(log), "--out", str(tmp_path / "o")]) == 0
    assert "wrote 2 labelled images" in capsys.readouterr().out


def test_an_image_sent_again_is_one_example_with_its_newest_label(tmp_path: Path) -> None:
    log = write_log(tmp_path / "logs", [("r0", 0, 1), ("r1", 1, 2), ("r2", 2, 3)])
    again = write_log(tmp_path / "logs", [("r0b", 50, 4)])
    lines = again.read_text().splitlines()
    last = json.loads(lines[-1])
    last["image"] = "images/r0.png"  # the same bytes as r0: the store names files by content
    again.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
    result = export_feedback(log, tmp_path / "out", holdout=0.34)
    files = _files(result.out)
    assert files["holdout"] == {f"{LABELS[4]}/r0.png"}  # at its newest time, newest label
    assert files["train"] == {f"{LABELS[2]}/r1.png", f"{LABELS[3]}/r2.png"}
    assert result.manifest["left_out"]["duplicate_image"] == 1
