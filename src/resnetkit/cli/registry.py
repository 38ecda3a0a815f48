"""``resnetkit registry ...``: register, inspect, alias, roll back, verify and clean the registry.

Every action takes ``--registry URL`` (else ``$RESNETKIT_REGISTRY``, else
``sqlite:///./resnetkit.db``), ``--artifacts DIR`` and ``--json``: tables for people,
JSON for scripts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from resnetkit.errors import ConfigError
from resnetkit.fileio import atomic_write, check_output_file
from resnetkit.registry import (
    AliasEvent,
    RegistrationOptions,
    RegistryRef,
    RegistryStore,
    VersionInfo,
    open_registry,
    parse_ref,
)
from resnetkit.registry.engine import display_url
from resnetkit.registry.records import BlessingRecord
from resnetkit.registry.store import DEFAULT_GC_GRACE_S

Handler = Callable[[RegistryStore, argparse.Namespace], int]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        metavar="URL",
        help="sqlite:///PATH or postgresql+psycopg://... "
        "(default: $RESNETKIT_REGISTRY, else sqlite:///./resnetkit.db)",
    )
    common.add_argument("--artifacts", metavar="DIR", help="artifact folder (default: recorded)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def _leaf(
    sub: Any, name: str, handler: Handler, help_text: str, *, creates: bool = False
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text, parents=[_common()])
    parser.set_defaults(func=lambda args: _with_store(handler, args, creates))
    return parser


def _with_store(handler: Handler, args: argparse.Namespace, creates: bool) -> int:
    # Only registration creates a registry; reading one that does not exist is an error.
    with open_registry(args.registry, args.artifacts, create=creates) as store:
        return handler(store, args)


def add_parser(subparsers: Any) -> None:
    """Register the ``registry`` command group."""
    parser = subparsers.add_parser("registry", help="versioned models, aliases and their history")
    sub = parser.add_subparsers(dest="registry_command", metavar="ACTION", required=True)
    _add_reading(sub)
    _add_register(sub)
    _add_aliasing(sub)
    _add_maintenance(sub)


def _add_reading(sub: Any) -> None:
    ls = _leaf(sub, "list", run_list, "registered models, or the versions of one")
    ls.add_argument("name", nargs="?", help="list this model's versions")
    show = _leaf(sub, "show", run_show, "everything recorded about one version")
    show.add_argument("ref", help="NAME, NAME:VERSION or NAME@ALIAS")
    hist = _leaf(sub, "history", run_history, "the alias audit log of a model")
    hist.add_argument("name")
    hist.add_argument("--alias", help="only this alias")
    card = _leaf(sub, "card", run_card, "write a Markdown model card")
    card.add_argument("ref")
    card.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")


def _add_register(sub: Any) -> None:
    reg = _leaf(sub, "register", run_register, "store a run directory or .onnx file", creates=True)
    reg.add_argument("source", metavar="RUN_DIR", help="run directory or .onnx file")
    reg.add_argument("--name", required=True, help="registered model name")
    reg.add_argument("--alias", action="append", default=[], help="point ALIAS at the new version")
    reg.add_argument("--reason", help="why --alias points at it (for the alias audit log)")
    reg.add_argument("--description", default="", help="free-form description")
    reg.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE", help="a tag")
    reg.add_argument("--code-version", help="code version (default: from the run, or git)")
    reg.add_argument("--who", help="who registers (default: $RESNETKIT_USER or login)")
    reg.add_argument(
        "--allow-rejected",
        action="store_true",
        help="register an int8 model even though it failed its accuracy budget",
    )
    reg.add_argument(
        "--artifact",
        action="append",
        default=[],
        type=Path,
        metavar="FILE",
        help="an edge model exported from this run (.pte, .tflite, .mlpackage), stored with it",
    )
    reg.add_argument(
        "--allow-duplicate",
        action="store_true",
        help="register weights that an earlier version already holds, as a new version",
    )


def _add_aliasing(sub: Any) -> None:
    who_help = "who acts (default: $RESNETKIT_USER or login name)"
    alias = _leaf(sub, "alias", run_alias, "point NAME@ALIAS at a version (logged)")
    alias.add_argument("name")
    alias.add_argument("alias")
    alias.add_argument("version", type=int)
    alias.add_argument("--reason", required=True, help="why, for the audit log")
    alias.add_argument("--who", help=who_help)
    unalias = _leaf(sub, "unalias", run_unalias, "remove NAME@ALIAS (logged)")
    unalias.add_argument("name")
    unalias.add_argument("alias")
    unalias.add_argument("--reason", required=True, help="why, for the audit log")
    unalias.add_argument("--who", help=who_help)
    back = _leaf(sub, "rollback", run_rollback, "move NAME@ALIAS back to its previous version")
    back.add_argument("ref", metavar="NAME@ALIAS")
    back.add_argument("--reason", default="rollback", help="why, for the audit log")
    back.add_argument("--who", help=who_help)


def _add_maintenance(sub: Any) -> None:
    ver = _leaf(sub, "verify", run_verify, "check every artifact against its sha256")
    ver.add_argument("ref", nargs="?", help="only this version")
    gc = _leaf(sub, "gc", run_gc, "remove artifact files no version references")
    gc.add_argument("--apply", action="store_true", help="delete (default: only list)")
    gc.add_argument("--grace-s", type=float, default=DEFAULT_GC_GRACE_S, help="keep newer files")
    delete = _leaf(sub, "delete", run_delete, "delete a version no alias points at")
    delete.add_argument("ref", metavar="NAME:VERSION")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    table = Table(title=title)
    for col in header:
        table.add_column(col)
    for row in rows:
        table.add_row(*(escape("-" if c is None else str(c)) for c in row))
    Console().print(table)


def run_list(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry list [NAME]``."""
    if args.name:
        infos = store.list_versions(args.name)
        if args.json:
            _print_json([i.to_dict() for i in infos])
            return 0
        rows = [_version_row(i) for i in infos]
        header = ("version", "aliases", "created", "by", "accuracy", "run", "description")
        _table(f"{args.name}: {len(rows)} versions", header, rows)
        return 0
    models = store.list_models()
    if args.json:
        _print_json([m.to_dict() for m in models])
        return 0
    rows = [
        (
            m.name,
            m.version_count,
            m.latest_version,
            ", ".join(f"{a}→{v}" for a, v in m.aliases.items()),
            m.created_at,
        )
        for m in models
    ]
    _table(
        f"registry {display_url(store.url)}",
        ("model", "versions", "latest", "aliases", "created"),
        rows,
    )
    return 0


def _version_row(info: VersionInfo) -> tuple[Any, ...]:
    acc = info.metrics.get("test_accuracy")
    return (
        info.version,
        ", ".join(info.aliases),
        info.created_at,
        info.created_by,
        f"{acc:.4f}" if isinstance(acc, float) else acc,
        info.run_id,
        info.description,
    )


def run_show(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry show REF``."""
    info = store.resolve(args.ref)
    blessings = store.blessings(info.ref)
    if args.json:
        _print_json({**info.to_dict(), "blessings": [b.to_dict() for b in blessings]})
        return 0
    fields = [
        ("arch", info.model_json.get("arch")),
        ("aliases", ", ".join(info.aliases)),
        ("created", f"{info.created_at} by {info.created_by}"),
        ("source", f"{info.source_kind} {info.source_path}"),
        ("run id", info.run_id),
        ("dataset", _dataset(info)),
        ("code version", info.code_version),
        ("description", info.description),
        ("tags", ", ".join(f"{k}={v}" for k, v in sorted(info.tags.items()))),
        *((f"metric {k}", v) for k, v in sorted(info.metrics.items())),
        ("preprocessing", json.dumps(info.preprocessing)),
    ]
    _table(info.ref, ("field", "value"), fields)
    files = [(a.filename, a.size_bytes, a.digest) for a in info.artifacts]
    _table("artifacts", ("file", "bytes", "sha256"), files)
    if blessings:
        _show_blessing(blessings[-1])
    return 0


def _show_blessing(record: BlessingRecord) -> None:
    """The current blessing: verdict, baseline, lineage, then every check of the gate."""
    blessing = record.blessing
    data = blessing.lineage.get("data", {})
    fields = [
        ("blessed", "yes" if blessing.blessed else "NO: " + ", ".join(blessing.failed_checks)),
        ("baseline", blessing.baseline or "no baseline"),
        ("pipeline run", f"{blessing.pipeline_run} ({record.created_at} by {record.created_by})"),
        *(
            (f"data {k}", v if isinstance(v, str) else json.dumps(v))
            for k, v in sorted(data.items())
        ),
        ("recipe", blessing.lineage.get("recipe")),
    ]
    _table("blessing", ("field", "value"), fields)
    checks = [
        (
            c["name"],
            c["value"],
            c["threshold"],
            "pass" if c["passed"] else "FAIL",
            c.get("detail", ""),
        )
        for c in blessing.checks
    ]
    _table("gate checks", ("check", "value", "threshold", "verdict", "detail"), checks)


def _dataset(info: VersionInfo) -> str | None:
    """``name (fingerprint)`` from the run's summary, or the fingerprint alone."""
    data = info.metrics.get("dataset")
    name = data.get("name") if isinstance(data, dict) else None
    if name and info.dataset_fingerprint:
        return f"{name} (fingerprint {info.dataset_fingerprint[:16]})"
    return name or info.dataset_fingerprint


def _parse_tags(items: Sequence[str]) -> dict[str, str]:
    tags = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"invalid --tag {item!r}: expected KEY=VALUE")
        tags[key] = value
    return tags


def run_register(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry register RUN_DIR --name NAME``: checked to load before it is stored."""
    from resnetkit.export import check_loadable  # builds the model: torch, only here

    if args.reason is not None and not args.alias:
        raise ConfigError("--reason explains an alias move; add --alias NAME or drop --reason")
    if args.reason is not None and not args.reason.strip():
        raise ConfigError("--reason must not be empty")
    with tempfile.TemporaryDirectory(prefix="resnetkit-register-") as scratch:
        extra = _edge_artifacts(args.source, args.artifact, Path(scratch))
        return _register(store, args, extra, check_loadable)


def _edge_artifacts(source: str, files: list[Path], scratch: Path) -> dict[str, Path]:
    """``--artifact`` files checked to come from ``source``'s weights, by artifact name."""
    if not files:
        return {}
    from resnetkit.contract import MODEL_WEIGHTS
    from resnetkit.export.edge import check_edge_artifact, pack_mlpackage
    from resnetkit.registry.artifacts import sha256_file

    weights = Path(source) / MODEL_WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"--artifact needs a run directory with {MODEL_WEIGHTS} as RUN_DIR")
    digest = sha256_file(weights)
    found: dict[str, Path] = {}
    for path in files:
        if not path.exists():
            raise ConfigError(f"--artifact {path} does not exist")
        name = check_edge_artifact(path, digest)
        if path.is_dir():  # a Core ML package is a folder: stored as one zip file
            name, path = f"{name}.zip", pack_mlpackage(path, scratch / f"{name}.zip")
        if name in found:
            raise ConfigError(f"--artifact: two files would both be stored as {name}")
        found[name] = path
    return found


def _register(
    store: RegistryStore,
    args: argparse.Namespace,
    extra: dict[str, Path],
    check: Callable[[Path], None],
) -> int:
    opts = RegistrationOptions(
        extra_files=extra,
        aliases=tuple(args.alias),
        reason=args.reason or "registered",
        description=args.description,
        tags=_parse_tags(args.tag),
        created_by=args.who,
        code_version=args.code_version,
        allow_rejected=args.allow_rejected,
        allow_duplicate=args.allow_duplicate,
    )
    info = store.register(args.source, args.name, opts, check=check)
    if args.json:
        _print_json(info.to_dict())
    else:
        aliases = f" ({', '.join(f'@{a}' for a in info.aliases)})" if info.aliases else ""
        Console().print(f"registered [bold]{escape(info.ref)}[/bold]{escape(aliases)}")
    return 0


def _print_event(event: AliasEvent, as_json: bool) -> None:
    if as_json:
        _print_json(event.to_dict())
        return
    Console().print(
        escape(f"{event.name}@{event.alias}: {event.from_version or '-'} → ")
        + escape(f"{event.to_version or '-'} ({event.kind} by {event.actor}: {event.reason})")
    )


def run_alias(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry alias NAME ALIAS VERSION --reason ...``."""
    if not args.reason.strip():
        raise ConfigError("--reason must say why the alias moves (it goes to the audit log)")
    event = store.set_alias(args.name, args.alias, args.version, reason=args.reason, actor=args.who)
    if event is None:
        message = f"{args.name}@{args.alias} already points at {args.version}; nothing moved"
        if args.json:
            _print_json({"moved": False, "message": message})
        else:
            Console().print(escape(message))
        return 0
    _print_event(event, args.json)
    return 0


def run_unalias(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry unalias NAME ALIAS --reason ...``."""
    event = store.remove_alias(args.name, args.alias, reason=args.reason, actor=args.who)
    _print_event(event, args.json)
    return 0


def _registry_ref(text: str, form: str) -> RegistryRef:
    ref = parse_ref(text)
    if not isinstance(ref, RegistryRef):
        raise ConfigError(f"expected {form}, got the path {text!r}")
    return ref


def run_rollback(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry rollback NAME@ALIAS``."""
    ref = _registry_ref(args.ref, "NAME@ALIAS")
    if ref.alias is None:
        raise ConfigError(f"rollback needs NAME@ALIAS, got {args.ref!r}")
    event = store.rollback(ref.name, ref.alias, reason=args.reason, actor=args.who)
    _print_event(event, args.json)
    return 0


def run_history(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry history NAME [--alias A]``."""
    events = store.history(args.name, args.alias)
    if args.json:
        _print_json([e.to_dict() for e in events])
        return 0
    rows = [
        (e.created_at, e.alias, e.kind, e.from_version, e.to_version, e.actor, e.reason)
        for e in events
    ]
    header = ("when", "alias", "kind", "from", "to", "who", "reason")
    _table(f"{args.name}: alias history", header, rows)
    return 0


def run_verify(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry verify [REF]``: exit status 1 when any artifact is missing or corrupt."""
    report = store.verify(args.ref)
    if args.json:
        _print_json(report.to_dict())
    elif report.ok:
        Console().print(
            f"ok: {report.checked_files} artifact files of "
            f"{report.checked_versions} versions match their sha256"
        )
    else:
        _table("integrity problems", ("problem",), [(p,) for p in report.problems])
    return 0 if report.ok else 1


def run_gc(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry gc [--apply]``."""
    report = store.gc(dry_run=not args.apply, grace_s=args.grace_s)
    if args.json:
        _print_json(report.to_dict())
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for path in report.files:
        print(f"{verb} {path}")
    print(
        f"{verb} {len(report.files)} files ({report.bytes_freed} bytes); "
        f"kept {report.kept_recent} unreferenced files younger than {args.grace_s:g} s"
        + ("; rerun with --apply to delete" if report.dry_run and report.files else "")
    )
    return 0


def run_card(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry card REF [-o FILE]``."""
    if args.output is not None:
        check_output_file(args.output, what="-o")
    text = store.card(args.ref)
    if args.output is None:
        print(text, end="")
        return 0
    atomic_write(args.output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    if args.json:
        _print_json({"card": str(args.output)})
    else:
        print(f"wrote {args.output}")
    return 0


def run_delete(store: RegistryStore, args: argparse.Namespace) -> int:
    """``registry delete NAME:VERSION``."""
    ref = _registry_ref(args.ref, "NAME:VERSION")
    if ref.version is None:
        raise ConfigError(f"delete needs an explicit NAME:VERSION, got {args.ref!r}")
    store.delete_version(ref.name, ref.version)
    if args.json:
        _print_json({"deleted": str(ref)})
    else:
        print(f"deleted {ref}; run `resnetkit registry gc` to reclaim its files")
    return 0
