"""Model cards: one Markdown page per version, from what the registry recorded."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

from resnetkit.registry.records import AliasEvent, VersionInfo

__all__ = ["render_card"]


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = (str(c).replace("|", "\\|").replace("\n", " ") for c in row)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _human(count: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(count) >= scale:
            return f"{count / scale:.2f}{unit}"
    return f"{count:g}"


def _architecture(info: VersionInfo) -> list[str]:
    mj = info.model_json
    lines = ["## Architecture", ""]
    if not mj:
        return [*lines, "Not recorded (an ONNX file without model.json).", ""]
    lines.append(f"- **arch**: `{mj.get('arch', 'unknown')}`")
    kwargs = mj.get("kwargs") or {}
    if kwargs:
        lines.append(f"- **kwargs**: `{json.dumps(kwargs, sort_keys=True)}`")
    profile = mj.get("profile")
    if isinstance(profile, dict):
        if "params" in profile:
            lines.append(f"- **parameters**: {_human(float(profile['params']))}")
        if "macs" in profile:
            lines.append(f"- **MACs**: {_human(float(profile['macs']))}")
    return [*lines, ""]


def _data(info: VersionInfo) -> list[str]:
    labels = info.model_json.get("labels") or []
    lines = ["## Data", ""]
    data = info.metrics.get("dataset")
    if isinstance(data, dict) and data.get("name"):
        sizes = ", ".join(
            f"{data[k]:,} {k.removesuffix('_samples')}"
            for k in ("train_samples", "val_samples")
            if isinstance(data.get(k), int)
        )
        lines.append(f"- **dataset**: {data['name']}" + (f" ({sizes} images)" if sizes else ""))
    lines.append(f"- **dataset fingerprint**: {info.dataset_fingerprint or 'unknown'}")
    if labels:
        shown = ", ".join(str(label) for label in labels[:20])
        more = f" (and {len(labels) - 20} more)" if len(labels) > 20 else ""
        lines.append(f"- **labels** ({len(labels)}): {shown}{more}")
    return [*lines, ""]


def _metrics(info: VersionInfo) -> list[str]:
    lines = ["## Metrics", ""]
    if not info.metrics:
        return [*lines, "No metrics recorded.", ""]
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else v) for k, v in sorted(info.metrics.items())]
    return [*lines, *_table(("metric", "value"), rows), ""]


def _preprocessing(info: VersionInfo) -> list[str]:
    lines = ["## Preprocessing", ""]
    if not info.preprocessing:
        return [*lines, "Not recorded.", ""]
    rows = ((k, json.dumps(v)) for k, v in sorted(info.preprocessing.items()))
    return [*lines, *_table(("setting", "value"), rows), ""]


def _lineage(info: VersionInfo) -> list[str]:
    lines = [
        "## Lineage",
        "",
        f"- **run id**: {info.run_id or 'unknown'}",
        f"- **code version**: {info.code_version or 'unknown'}",
        f"- **source**: {info.source_kind} `{info.source_path}`",
        f"- **registered**: {info.created_at} by {info.created_by}",
        "",
    ]
    rows = ((f"`{a.filename}`", a.size_bytes, f"`{a.digest}`") for a in info.artifacts)
    return [*lines, *_table(("artifact", "bytes", "sha256"), rows), ""]


def _alias_history(events: Sequence[AliasEvent]) -> list[str]:
    lines = ["## Alias history", ""]
    if not events:
        return [*lines, "No alias has been set.", ""]
    rows = (
        (
            e.created_at,
            e.alias,
            e.kind,
            e.from_version or "-",
            e.to_version or "-",
            e.actor,
            e.reason,
        )
        for e in events
    )
    header = ("when", "alias", "kind", "from", "to", "who", "reason")
    return [*lines, *_table(header, rows), ""]


def render_card(info: VersionInfo, events: Sequence[AliasEvent]) -> str:
    """The Markdown model card of one version, with its model's alias history."""
    title = [f"# {info.name} — version {info.version}", ""]
    if info.description:
        title += [info.description, ""]
    if info.aliases:
        title += ["Aliases: " + ", ".join(f"`{info.name}@{a}`" for a in info.aliases), ""]
    if info.tags:
        title += ["Tags: " + ", ".join(f"`{k}={v}`" for k, v in sorted(info.tags.items())), ""]
    sections = (_architecture, _data, _metrics, _preprocessing, _lineage)
    body = [line for section in sections for line in section(info)]
    return "\n".join(title + body + _alias_history(events)).rstrip() + "\n"
