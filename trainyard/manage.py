"""The CLI's lifecycle commands: cancel, delete, tag, datasets, usage, compare (a tenant's
own, over HTTP with the typed client), and the operator's gc and tenants (on the server's
database, like ``keys``). ``trainyard.cli`` registers them with ``add_commands``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

Command = Callable[[str, str], argparse.ArgumentParser]


def _ty() -> Any:
    from trainyard.sdk import Trainyard

    return Trainyard.from_env()


def _emit(data: Any, as_json: bool, table: Callable[[], Any]) -> int:
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return 0
    from trainyard.display import console

    console().print(table())
    return 0


def _confirmed(what: str, yes: bool) -> bool:
    """Deleting asks first on a terminal; elsewhere it needs --yes."""
    if yes:
        return True
    if not sys.stdin.isatty():
        print(f"trainyard: deleting {what} needs --yes when not on a terminal", file=sys.stderr)
        return False
    return input(f"delete {what} and everything it owns? [y/N] ").strip().lower() == "y"


def cmd_cancel(args: argparse.Namespace) -> int:
    found = _ty().cancel(args.id)
    print(f"{found.id} {found.status}")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    if not _confirmed(args.id, args.yes):
        return 1
    _ty().delete(args.id)
    print(f"{args.id} deleted")
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    """Add and remove tags, set or clear the note, keep or release; the rest stays."""
    ty = _ty()
    current = ty.experiment(args.id) if args.id.startswith("exp_") else ty.job(args.id)
    tags = [t for t in current.tags if t not in (args.remove or [])]
    tags += [t for t in (args.add or []) if t not in tags]
    found = ty.tag(args.id, tags=tags, note=args.note, clear_note=args.clear_note,
                   keep=args.keep)
    print(f"{found.id} tags={','.join(found.tags) or '-'} keep={found.keep}"
          + (f" note={found.note!r}" if found.note else ""))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    ty = _ty()
    if args.action == "upload":
        if not args.target_or_file:
            raise SystemExit("trainyard datasets upload FILE [--target COLUMN]")
        ds = ty.upload_dataset(args.target_or_file, target=args.target, name=args.name,
                               task=args.task)
        return _emit(ds.model_dump(mode="json"), args.json, lambda: _datasets_table([ds]))
    if args.action == "list":
        found = list(ty.datasets())
        return _emit([d.model_dump(mode="json") for d in found], args.json,
                     lambda: _datasets_table(found))
    if not args.target_or_file:
        raise SystemExit(f"trainyard datasets {args.action} DATASET_ID")
    if args.action == "show":
        raw = ty.client._check(ty.client.send("GET", f"/v1/datasets/{args.target_or_file}"))
        from trainyard.display import resource_table

        return _emit(raw, args.json, lambda: resource_table(raw))
    if not _confirmed(args.target_or_file, args.yes):
        return 1
    ty.delete(args.target_or_file)
    print(f"{args.target_or_file} deleted")
    return 0


def _datasets_table(datasets: list[Any]) -> Any:
    from trainyard.display import plain_table

    table = plain_table("ID", "NAME", "TASK", "ROWS", "FEATURES", "CLASSES", "BYTES")
    for d in datasets:
        table.add_row(d.id, d.name[:40], d.task, str(d.rows), str(d.features),
                      str(d.n_classes), f"{d.size_bytes:,}")
    return table


def cmd_usage(args: argparse.Namespace) -> int:
    usage = _ty().usage()

    def table() -> Any:
        from trainyard.display import plain_table

        rows = plain_table("WHAT", "USED", "QUOTA")
        stored = usage.storage_bytes
        for part in ("datasets", "checkpoints", "model_exports"):
            rows.add_row(f"{part} (bytes)", f"{stored[part]:,}", "")
        rows.add_row("storage (bytes)", f"{stored['total']:,}",
                     f"{usage.quota['storage_bytes']:,}")
        rows.add_row("datasets (count)", str(usage.datasets), str(usage.quota["datasets"]))
        return rows

    return _emit(usage.model_dump(mode="json"), args.json, table)


def cmd_compare(args: argparse.Namespace) -> int:
    found = _ty().compare(args.ids, args.metric)

    def table() -> Any:
        from trainyard.display import plain_table

        rows = plain_table("", *(j["id"] for j in found["jobs"]))
        for diff in found["spec_differences"]:
            rows.add_row(diff["path"], *(json.dumps(diff["values"].get(j["id"]))
                                         for j in found["jobs"]))
        for metric, curve in found["curves"].items():
            last = [next((v for v in reversed(curve["values"][j["id"]]) if v is not None), None)
                    for j in found["jobs"]]
            rows.add_row(f"last {metric}", *("-" if v is None else f"{v:.4g}" for v in last))
        tests = [(j.get("summary") or {}).get("test", {}) for j in found["jobs"]]
        for name in sorted({n for t in tests for n in t}):
            rows.add_row(f"test {name}", *(f"{t[name]:.4g}" if name in t else "-"
                                           for t in tests))
        return rows

    return _emit(found, args.json, table)


def cmd_gc(_args: argparse.Namespace) -> int:
    from app.services import admin

    print(json.dumps(admin.collect_garbage()))
    return 0


def cmd_tenants(args: argparse.Namespace) -> int:
    from app.services import admin

    if args.action == "quota":
        admin.set_quota(args.tenant, storage_bytes=args.storage, datasets=args.datasets)
    print(admin.tenant_usage(args.tenant).model_dump_json(indent=2))
    return 0


def add_commands(command: Command) -> None:
    cn = command("cancel", "cancel a job or an experiment")
    cn.add_argument("id", help="job_... or exp_...")
    cn.set_defaults(func=cmd_cancel)
    dl = command("delete", "delete a job, an experiment (with its children) or a dataset")
    dl.add_argument("id", help="job_..., exp_... or ds_...")
    dl.add_argument("--yes", action="store_true", help="do not ask")
    dl.set_defaults(func=cmd_delete)
    tg = command("tag", "edit a job's or an experiment's tags, note and keep")
    tg.add_argument("id", help="job_... or exp_...")
    tg.add_argument("--add", action="append", metavar="TAG")
    tg.add_argument("--remove", action="append", metavar="TAG")
    tg.add_argument("--note")
    tg.add_argument("--clear-note", action="store_true")
    tg.add_argument("--keep", action=argparse.BooleanOptionalAction,
                    help="exempt from retention (--no-keep: not)")
    tg.set_defaults(func=cmd_tag)
    ds = command("datasets", "datasets: upload FILE | list | show ID | delete ID")
    ds.add_argument("action", choices=["upload", "list", "show", "delete"])
    ds.add_argument("target_or_file", nargs="?", metavar="FILE_OR_ID")
    ds.add_argument("--target", help="upload: the CSV's target column")
    ds.add_argument("--name")
    ds.add_argument("--task", default="auto",
                    choices=["auto", "classification", "regression", "unlabeled"])
    ds.add_argument("--yes", action="store_true", help="delete: do not ask")
    ds.add_argument("--json", action="store_true")
    ds.set_defaults(func=cmd_datasets)
    us = command("usage", "your storage and dataset count beside your quotas")
    us.add_argument("--json", action="store_true")
    us.set_defaults(func=cmd_usage)
    cp = command("compare", "jobs side by side: spec differences, last metrics, test scores")
    cp.add_argument("ids", nargs="+", metavar="JOB_ID")
    cp.add_argument("--metric", action="append", help="split_name, e.g. val_loss (repeatable)")
    cp.add_argument("--json", action="store_true", help="the API's answer (curves too)")
    cp.set_defaults(func=cmd_compare)
    command("gc", "delete what retention says is due (server side)").set_defaults(func=cmd_gc)
    tn = command("tenants", "a tenant's usage, or set its quotas: usage T | quota T ...")
    tn.add_argument("action", choices=["usage", "quota"])
    tn.add_argument("tenant")
    tn.add_argument("--storage", type=int, metavar="BYTES", help="quota: storage (unset: default)")
    tn.add_argument("--datasets", type=int, metavar="N", help="quota: datasets (unset: default)")
    tn.set_defaults(func=cmd_tenants)


SERVER_COMMANDS = ("gc", "tenants")
