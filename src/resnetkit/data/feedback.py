"""Production data with labels: the server's logged request images joined with their feedback.

A server started with ``--prediction-log FILE --log-images`` keeps a sample of requests as JSON
lines in ``FILE`` (rotated as ``FILE.1`` ... ``FILE.N``) and their images, content addressed,
in ``images/`` beside it. Every label accepted by ``POST /v1/feedback`` is appended to the
feedback log beside it, ``FILE`` + :data:`FEEDBACK_SUFFIX` (one JSON object a line)::

    {"time": "2025-01-31T12:00:01.456Z", "request_id": "...", "label": 7,
     "label_name": "sneaker", "model": "fashion", "version": "3"}

A request labelled twice has two lines: the last one wins.

:func:`export_feedback` joins the two by request id and writes an ImageFolder::

    DIR/train/<class>/<sha256>.<ext>     the oldest labelled images
    DIR/holdout/<class>/<sha256>.<ext>   the newest (``holdout`` of them, by prediction time)
    DIR/manifest.json                    counts per class and split, label sources, time range

The folder appears whole or not at all: it is written beside ``DIR`` under a temporary name
and renamed at the end. This module imports neither torch nor the server: the server writes
the feedback log with :func:`feedback_record` and :data:`FEEDBACK_SUFFIX` from here, so the
format lives once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from resnetkit.errors import ConfigError, DataError
from resnetkit.fileio import check_output_dir

__all__ = [
    "FEEDBACK_SUFFIX",
    "MANIFEST",
    "FeedbackExport",
    "LabelledSample",
    "export_feedback",
    "feedback_log_path",
    "feedback_record",
    "labelled_samples",
    "parse_since",
]

#: The feedback log is the prediction log's path with this appended.
FEEDBACK_SUFFIX = ".feedback.jsonl"
#: The manifest written at the top of an export.
MANIFEST = "manifest.json"
#: Where a class's images go in an export: the training part and the held-out part.
SPLITS = ("train", "holdout")
#: Rotated prediction logs read at most (``FILE.1`` ... ``FILE.<this>``).
_MAX_ROTATED = 1000
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SAFE_CLASS = re.compile(r"^[^/\\\x00]+$")

#: ``(stage, done, total)``: called as an export goes, for a progress bar.
Progress = Callable[[str, int, int], None]


def feedback_log_path(prediction_log: str | os.PathLike[str]) -> Path:
    """The feedback log that belongs to ``prediction_log``."""
    path = Path(prediction_log)
    return path.with_name(path.name + FEEDBACK_SUFFIX)


def feedback_record(
    request_id: str, label: int, label_name: str, model: str, version: str, when: datetime
) -> bytes:
    """One line of the feedback log (ASCII JSON ending in a newline)."""
    doc = {
        "time": _iso(when),
        "request_id": request_id,
        "label": int(label),
        "label_name": str(label_name),
        "model": str(model),
        "version": str(version),
    }
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")


@dataclasses.dataclass(frozen=True)
class LabelledSample:
    """One logged request with an image and a label."""

    request_id: str
    time: datetime  # when it was predicted
    image: Path  # the logged image file
    label: int
    label_name: str
    labelled_at: datetime
    model: str
    version: str


@dataclasses.dataclass(frozen=True)
class FeedbackExport:
    """What :func:`export_feedback` wrote (also ``manifest.json``)."""

    out: Path
    manifest: dict[str, Any]

    @property
    def total(self) -> int:
        """Images written, train and holdout together."""
        return int(self.manifest["samples"]["exported"])


def parse_since(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 time (``2025-01-31T12:00:00Z``) or a duration back from now (``30m``,
    ``2h``, ``7d``) as an aware UTC datetime.

    Raises:
        ConfigError: neither form.
    """
    match = _DURATION.match(text.strip())
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
        return (now or datetime.now(timezone.utc)) - timedelta(seconds=seconds)
    try:
        return _parse_time(text.strip())
    except ValueError as exc:
        raise ConfigError(
            f"--since {text!r}: give an ISO 8601 time (2025-01-31T12:00:00Z) or a duration "
            "back from now (30m, 2h, 7d)"
        ) from exc


def labelled_samples(
    prediction_log: str | os.PathLike[str],
    *,
    since: datetime | None = None,
    progress: Progress | None = None,
) -> tuple[list[LabelledSample], dict[str, int]]:
    """Join the prediction log (with its rotated files) and its feedback log by request id.

    Returns:
        The samples that have both an image on disk and a label, oldest prediction first, and
        counts of what was read and left out (``predictions``, ``labels``, ``no_image``,
        ``no_label``, ``label_without_prediction``, ``image_missing``, ``before_since``,
        ``bad_lines``, ``duplicate_image``: the same image labelled again, kept once, newest).

    Raises:
        DataError: no prediction log at that path.
    """
    log = Path(prediction_log)
    if not log.is_file():
        raise DataError(
            f"prediction log {log} not found: give the file passed to `resnetkit serve "
            "--prediction-log` (with --log-images), on a folder this machine can read"
        )
    counts: Counter[str] = Counter()
    labels = _read_labels(feedback_log_path(log), counts)
    samples: list[LabelledSample] = []
    files = _log_files(log)
    logged: set[str] = set()
    for done, path in enumerate(files, 1):
        for doc in _json_lines(path, counts):
            counts["predictions"] += 1
            logged.add(str(doc.get("request_id")))
            sample = _join(doc, labels, log.parent, since, counts)
            if sample is not None:
                samples.append(sample)
        if progress is not None:
            progress("read", done, len(files))
    # Labels of requests the log did not sample (or whose lines rotated away).
    counts["label_without_prediction"] = sum(1 for rid in labels if rid not in logged)
    samples.sort(key=lambda s: (s.time, s.request_id))
    # The same image sent again is one example (its newest label), so it can never be in
    # both the training part and the holdout.
    newest = {sample.image: sample for sample in samples}
    counts["duplicate_image"] = len(samples) - len(newest)
    return sorted(newest.values(), key=lambda s: (s.time, s.request_id)), dict(counts)


def export_feedback(
    prediction_log: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    holdout: float = 0.2,
    since: datetime | None = None,
    min_samples: int = 1,
    progress: Progress | None = None,
) -> FeedbackExport:
    """Write the labelled production images as an ImageFolder with a time-ordered holdout.

    Args:
        prediction_log: the server's ``--prediction-log`` file.
        out: the folder to create; it must not exist (or be empty).
        holdout: the newest fraction of samples kept out of training, in ``[0, 1)``.
        since: only requests predicted at or after this time.
        min_samples: fewer labelled images than this is an error (nothing is written).
        progress: called with ``(stage, done, total)`` as the export goes.

    Raises:
        ConfigError: a bad argument or an output folder that is in use.
        DataError: no log, or fewer than ``min_samples`` labelled images.
    """
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"--holdout must be in [0, 1), got {holdout:g}")
    target = _check_out(Path(out))
    samples, counts = labelled_samples(prediction_log, since=since, progress=progress)
    if len(samples) < max(1, min_samples):
        raise DataError(
            f"{len(samples)} labelled images in {prediction_log} "
            f"(of {counts.get('predictions', 0)} logged predictions, "
            f"{counts.get('labels', 0)} labels); need at least {max(1, min_samples)}: serve "
            "with --log-images and send labels to POST /v1/feedback"
        )
    # At least one of each when there are two samples and a holdout is asked for.
    n = len(samples)
    n_holdout = min(n - 1, max(1, round(n * holdout))) if holdout > 0 and n > 1 else 0
    parts = {
        "train": samples[: len(samples) - n_holdout],
        "holdout": samples[len(samples) - n_holdout :],
    }
    manifest = _manifest(Path(prediction_log), samples, parts, counts, holdout, since)
    _write_atomically(target, parts, manifest, progress)
    return FeedbackExport(out=target, manifest=manifest)


# -- reading ---------------------------------------------------------------------------------


def _read_labels(path: Path, counts: Counter[str]) -> dict[str, dict[str, Any]]:
    """request id -> its last label line (an absent feedback log is no labels)."""
    labels: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return labels
    for doc in _json_lines(path, counts):
        rid, label = doc.get("request_id"), doc.get("label")
        if not isinstance(rid, str) or isinstance(label, bool) or not isinstance(label, int):
            counts["bad_lines"] += 1
            continue
        try:
            doc["time"] = _parse_time(str(doc.get("time")))
        except ValueError:
            counts["bad_lines"] += 1
            continue
        counts["labels"] += 1
        labels[rid] = doc  # the last label wins
    return labels


def _log_files(log: Path) -> list[Path]:
    """The rotated files, oldest first, then the live one."""
    rotated = []
    for index in range(1, _MAX_ROTATED + 1):
        older = log.with_name(f"{log.name}.{index}")
        if not older.is_file():
            break
        rotated.append(older)
    return [*reversed(rotated), log]


def _json_lines(path: Path, counts: Counter[str]) -> Iterator[dict[str, Any]]:
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        for raw in handle:
            try:
                doc = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                counts["bad_lines"] += 1  # a line a crash cut short
                continue
            if isinstance(doc, dict):
                yield doc
            else:
                counts["bad_lines"] += 1


def _join(
    doc: dict[str, Any],
    labels: dict[str, dict[str, Any]],
    root: Path,
    since: datetime | None,
    counts: Counter[str],
) -> LabelledSample | None:
    rid = doc.get("request_id")
    label = labels.get(rid) if isinstance(rid, str) else None
    if label is None:
        counts["no_label"] += 1
        return None
    try:
        when = _parse_time(str(doc.get("time")))
    except ValueError:
        counts["bad_lines"] += 1
        return None
    if since is not None and when < since:
        counts["before_since"] += 1
        return None
    image = doc.get("image")
    if not isinstance(image, str):
        counts["no_image"] += 1
        return None
    path = (root / image).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        counts["image_missing"] += 1  # evicted by the image store's size bound
        return None
    return LabelledSample(
        request_id=str(rid),
        time=when,
        image=path,
        label=int(label["label"]),
        label_name=_class_name(label),
        labelled_at=label["time"],
        model=str(doc.get("model", "")),
        version=str(doc.get("version", "")),
    )


def _class_name(label: dict[str, Any]) -> str:
    """The class folder: the label's name when it is a safe folder name, else its index."""
    name = label.get("label_name")
    if isinstance(name, str) and _SAFE_CLASS.match(name) and name not in (".", ".."):
        return name if not name.startswith(".") else f"_{name}"
    return str(label["label"])


# -- writing ---------------------------------------------------------------------------------


def _check_out(target: Path) -> Path:
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"--out {target} exists and is not empty; give a new folder")
    check_output_dir(target.parent if not target.exists() else target, what="--out")
    return target


def _write_atomically(
    target: Path,
    parts: dict[str, list[LabelledSample]],
    manifest: dict[str, Any],
    progress: Progress | None,
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        total, done = sum(len(p) for p in parts.values()), 0
        for split, samples in parts.items():
            for sample in samples:
                folder = staging / split / sample.label_name
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(sample.image, folder / sample.image.name)
                done += 1
                if progress is not None and (done % 256 == 0 or done == total):
                    progress("write", done, total)
        text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
        (staging / MANIFEST).write_text(text, encoding="utf-8")
        if target.exists():
            target.rmdir()  # empty, checked above
        os.rename(staging, target)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"cannot write the export to {target}: {exc.strerror or exc}") from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _manifest(
    log: Path,
    samples: list[LabelledSample],
    parts: dict[str, list[LabelledSample]],
    counts: dict[str, int],
    holdout: float,
    since: datetime | None,
) -> dict[str, Any]:
    classes = sorted({(s.label, s.label_name) for s in samples})
    return {
        "prediction_log": str(log.resolve()),
        "feedback_log": str(feedback_log_path(log).resolve()),
        "since": _iso(since) if since is not None else None,
        "holdout_fraction": holdout,
        "classes": {name: index for index, name in classes},
        "counts": {
            split: dict(sorted(Counter(s.label_name for s in part).items()))
            for split, part in parts.items()
        },
        "samples": {"exported": len(samples), **{k: len(v) for k, v in parts.items()}},
        "left_out": {k: v for k, v in sorted(counts.items()) if k not in ("predictions", "labels")},
        "read": {"predictions": counts.get("predictions", 0), "labels": counts.get("labels", 0)},
        "label_sources": {
            "POST /v1/feedback": len(samples),
            "models": dict(sorted(Counter(f"{s.model}:{s.version}" for s in samples).items())),
        },
        "time_range": {
            split: ({"first": _iso(part[0].time), "last": _iso(part[-1].time)} if part else None)
            for split, part in parts.items()
        },
        "labelled_range": (
            {
                "first": _iso(min(s.labelled_at for s in samples)),
                "last": _iso(max(s.labelled_at for s in samples)),
            }
            if samples
            else None
        ),
    }


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(text: str) -> datetime:
    when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)
