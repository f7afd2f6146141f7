"""The ``trainyard`` command: run the service (api, worker, migrate, run) and use it
(submit, watch, jobs, experiments, show, metrics, keys)."""

# The composition root: the one module that may import both ``app`` and ``worker``. It does
# so only inside the commands that need them, so ``trainyard --help`` and the client
# commands load neither torch, celery, sqlalchemy nor fastapi.

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainyard import manage

if TYPE_CHECKING:
    from trainyard.client import Client

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
ROOT = Path(__file__).resolve().parents[1]


# Request logs of the HTTP libraries: what a client command shows is what the user asked
# for; `--verbose` shows these too.
CLIENT_LIBRARY_LOGGERS = ("httpx", "httpcore")


def setup_logging(verbose: bool = False) -> None:
    """A client command's logging: text, and library request logs only with --verbose."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    for name in CLIENT_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def setup_server_logging() -> None:
    """A server command's logging: TRAINYARD_LOG_FORMAT (text or json), ids attached."""
    from app.config import get_settings
    from app.logs import configure

    configure(get_settings().log_format)


def prepare_metrics_folder() -> None:
    """Before anything imports prometheus_client: this host's multiprocess folder, shared
    by every process started from here (app/observability.py)."""
    from app import metrics_folder
    from app.config import get_settings

    settings = get_settings()
    metrics_folder.prepare(settings.metrics_dir or settings.home / "metrics")


# ------------------------------------------------------------------- server side


def cmd_migrate(_args: argparse.Namespace) -> int:
    from app.services import admin

    print(f"database at head: {admin.upgrade_schema()}")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    port = args.port or int(os.environ.get("PORT", "8000"))
    prepare_metrics_folder()
    uvicorn.run("app.main:create_app", factory=True, host=args.host, port=port,
                workers=api_workers(args.workers), log_config=api_log_config(),
                log_level="info", access_log=args.access_log)
    return 0


def api_log_config() -> dict[str, Any]:
    """uvicorn's logging plus ours on the root logger: applied in every worker process
    too (they are spawned, so this process's logging setup does not reach them). In JSON,
    uvicorn's own lines go through our handler as well."""
    from uvicorn.config import LOGGING_CONFIG

    from app.config import get_settings
    from app.logs import logging_config

    fmt = get_settings().log_format
    ours = logging_config(fmt)
    loggers = {**LOGGING_CONFIG["loggers"], **ours["loggers"]}
    if fmt == "json":
        loggers |= {name: {"handlers": [], "level": "INFO", "propagate": True}
                    for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}
    return {**LOGGING_CONFIG, "handlers": {**LOGGING_CONFIG["handlers"], **ours["handlers"]},
            "root": ours["root"], "loggers": loggers}


def api_workers(flag: int | None) -> int:
    """--workers, else TRAINYARD_API_WORKERS, else half the cores, 2 to 4: the API shares
    its host with workers and SQL, yet on 2 cores two processes served 8 pollers twice as
    fast as one (bench/poll_load.py: 1,475 against 686 req/s). Processes share nothing but
    SQL (SQLite's WAL serves several readers)."""
    from app.config import get_settings

    chosen = flag if flag is not None else get_settings().api_workers
    return chosen or max(2, min((os.cpu_count() or 1) // 2, 4))


def cmd_worker(args: argparse.Namespace) -> int:
    prepare_metrics_folder()
    from app.config import get_settings
    from worker.celery_app import celery

    queues = args.queues or get_settings().default_queue
    # OpenMP threads that spin while waiting turn a busy machine into a 10x slowdown of
    # small jobs (measured: digits MLP 2.5 s -> 23 s under load); sleeping costs ~nothing.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if not get_settings().torch_threads:  # share the cores among the pool's children
        cores = os.cpu_count() or 1
        os.environ["TRAINYARD_TORCH_THREADS"] = str(max(1, cores // args.concurrency))
        get_settings.cache_clear()
    argv = ["worker", f"--queues={queues}", f"--concurrency={args.concurrency}",
            f"--pool={args.pool}", "--loglevel=INFO", "--without-gossip", "--without-mingle",
            "--without-heartbeat", f"--hostname={args.hostname}"]
    if get_settings().log_format == "json":
        argv.insert(0, "--quiet")  # Celery's banner is not a record: every line stays JSON
    celery.worker_main(argv)
    return 0


def cmd_reap(_args: argparse.Namespace) -> int:
    from app.services import admin

    print(json.dumps(admin.reap()))
    return 0


def ensure_dev_key() -> str:
    """Embedded mode: a development key for tenant 'dev', created once."""
    from app.config import get_settings
    from app.services import admin

    path = get_settings().home / "dev-key"
    if path.exists():
        return path.read_text().strip()
    _, key = admin.create_key("dev")
    # created with mode 0600 by the open itself: never readable by others, even briefly
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write(key + "\n")
    print(f"created development API key (tenant 'dev'), saved to {path}:\n  {key}", flush=True)
    return key


def _spawn(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "trainyard.cli", *argv])


def cmd_run(args: argparse.Namespace) -> int:
    """API + one real worker process on the embedded default, in the foreground."""
    from app.config import get_settings

    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    cmd_migrate(args)
    key = ensure_dev_key()
    port = args.port or int(os.environ.get("PORT", "8000"))
    prepare_metrics_folder()  # before the children: they share it, and neither empties it
    procs = [_spawn("api", "--port", str(port)), _spawn("worker", "--concurrency", "1")]
    stop = {"now": False}

    def on_signal(*_: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    print(f"Trainyard on http://127.0.0.1:{port}  (docs: /docs; Ctrl-C stops)", flush=True)
    try:
        if args.demo:
            _demo(f"http://127.0.0.1:{port}", key, stop)
        while not stop["now"] and all(p.poll() is None for p in procs):
            time.sleep(0.3)
    finally:  # the children are stopped however this ends (a failed demo included)
        _stop_all(procs, settings.worker_stop_seconds + 10)
    print("stopped", flush=True)
    return 0


def _stop_all(procs: list[subprocess.Popen[bytes]], bound: float) -> None:
    """SIGTERM each (a repeat is harmless when the whole group already got one); the worker
    bounds its own stop by worker_stop_seconds, so past ``bound`` a process is stuck and is
    killed with everything it started."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + bound
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill_tree(p.pid)
            p.wait()


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and its descendants (found through /proc; Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(entry.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.parent.name))
    stack = [pid]
    while stack:
        current = stack.pop()
        stack.extend(children.get(current, []))
        with contextlib.suppress(ProcessLookupError):
            os.kill(current, signal.SIGKILL)


def _demo(url: str, key: str, stop: dict[str, bool]) -> None:
    import httpx

    from trainyard.client import Client, wait_ready, watch

    client = Client(url, key, attempts=3, retry_timeout=5)  # Ctrl-C must not wait on retries
    if not wait_ready(client, stop):
        return
    spec = json.loads((ROOT / "examples" / "digits.json").read_text())
    job = client.submit(spec)
    print(f"demo: submitted examples/digits.json as {job['id']}; watching it train", flush=True)
    try:
        watch(client, job["id"], stop=stop)
    except httpx.HTTPError:
        if not stop["now"]:  # after Ctrl-C the API stopping under the watch is expected
            raise


# ------------------------------------------------------------------- client side


def _client() -> Client:
    from trainyard.client import Client

    return Client.from_env()


def cmd_submit(args: argparse.Namespace) -> int:
    body = json.loads(Path(args.spec).read_text())
    client = _client()
    made = client.submit(body, idempotency_key=args.idempotency_key)
    print(f"{made['id']} {made['status']}  {client.base}{made['links']['self']}")
    return _watch(client, made["id"]) if args.watch else 0


def cmd_watch(args: argparse.Namespace) -> int:
    return _watch(_client(), args.id)


def _watch(client: Client, resource_id: str) -> int:
    """Exit status 0 only when the job or experiment succeeded. A terminal gets rich's
    progress bar; a pipe gets a line per epoch."""
    from trainyard.client import is_experiment_id, watch, watch_experiment

    view = None
    if sys.stdout.isatty():
        from trainyard.display import ProgressView

        view = ProgressView()
    if is_experiment_id(resource_id):
        return 0 if watch_experiment(client, resource_id, view=view) == "succeeded" else 1
    return 0 if watch(client, resource_id, view=view) == "succeeded" else 1


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def cmd_jobs(args: argparse.Namespace) -> int:
    page = _client().list_jobs(status=args.status, limit=args.limit, tag=args.tag,
                               order_by=args.order_by, cursor=args.cursor,
                               name_prefix=args.name_prefix)
    if args.json:
        print_json(page)
        return 0
    from trainyard.display import console, jobs_table

    console().print(jobs_table(page["items"]))
    if page["next_cursor"]:
        print(f"more: --cursor {page['next_cursor']}", file=sys.stderr)
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    page = _client().list_experiments(status=args.status, kind=args.kind, limit=args.limit)
    if args.json:
        print_json(page)
        return 0
    from trainyard.display import console, experiments_table

    console().print(experiments_table(page["items"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    resource = _client().get(args.id)
    if args.json:
        print_json(resource)
        return 0
    from trainyard.display import console, resource_table

    console().print(resource_table(resource))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    """Every metric point of a job: a table of epochs, or CSV / JSON for other tools."""
    points = _all_points(_client(), args.id)
    points = [p for p in points if (not args.split or p["split"] in args.split)
              and (not args.name or p["name"] in args.name)]
    if args.json:
        print_json(points)
        return 0
    from trainyard.display import console, metrics_table, write_metrics_csv

    if args.csv:
        write_metrics_csv(points, sys.stdout)
    else:
        console().print(metrics_table(points))
    return 0


def _all_points(client: Client, job_id: str) -> list[dict[str, Any]]:
    """Page through the job's points with the API's cursor until a page comes back empty."""
    points: list[dict[str, Any]] = []
    after = 0
    while True:
        page = client.metrics(job_id, after)
        if not page["points"]:
            return points
        points.extend(page["points"])
        after = page["next_after"]


def cmd_plot(args: argparse.Namespace) -> int:
    """Save a plot drawn by the server; the format follows -o's suffix (.svg or .png)."""
    out = Path(args.output) if args.output else None
    fmt = out.suffix.lower().lstrip(".") if out else "svg"
    if fmt not in ("svg", "png"):
        print(f"trainyard plot: -o must end in .svg or .png, not '{out}'", file=sys.stderr)
        return 2
    name, image = _client().plot(args.id, args.name, fmt)
    out = out or Path(f"{args.id}-{name}.{fmt}")
    out.write_bytes(image)
    print(out)
    return 0


PREDICT_BATCH = 1000  # rows per request: well under the API's max_predict_rows and bytes


def cmd_predict(args: argparse.Namespace) -> int:
    """Rows from a CSV (a header of feature names) or JSON file through a job's or an
    experiment's model; the labels and probabilities (or values) as CSV, or JSON with
    --json or -o FILE.json."""
    key, rows = read_rows(Path(args.file))
    client = _client()
    answers = [client.predict(args.id, {key: rows[i : i + PREDICT_BATCH]})
               for i in range(0, len(rows), PREDICT_BATCH)] or [
        client.predict(args.id, {key: []})]  # the API names the problem of an empty file
    merged = {**answers[0], "predictions": [p for a in answers for p in a["predictions"]]}
    out = Path(args.output) if args.output else None
    as_json = args.json or (out is not None and out.suffix.lower() == ".json")
    with out.open("w", newline="") if out else contextlib.nullcontext(sys.stdout) as sink:
        if as_json:
            sink.write(json.dumps(merged, indent=2) + "\n")
        else:
            write_predictions_csv(merged, sink)
    return 0


def read_rows(path: Path) -> tuple[str, list[Any]]:
    """("records", [{name: value}]) from a CSV with a header, or what a JSON file holds: a
    predict body, a list of lists (rows) or a list of objects (records)."""
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict) and len(data) == 1 and next(iter(data)) in ("rows", "records"):
            return next(iter(data.items()))
        is_records = isinstance(data, list) and bool(data) and isinstance(data[0], dict)
        return ("records" if is_records else "rows"), data
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        return "records", [{name: _number(value, n, name) for name, value in row.items()}
                           for n, row in enumerate(reader, start=2)]


def _number(value: str | None, line: int, column: str) -> float:
    try:
        return float(value or "")
    except ValueError:
        raise SystemExit(f"trainyard predict: line {line}, column '{column}': "
                         f"'{value}' is not a number") from None


def write_predictions_csv(answer: dict[str, Any], sink: Any) -> None:
    writer = csv.writer(sink)
    classes = answer.get("classes")
    if classes is None:
        writer.writerow(["value"])
        writer.writerows([p["value"]] for p in answer["predictions"])
        return
    writer.writerow(["label", *(f"p_{c}" for c in classes)])
    writer.writerows([p["label"], *p["probabilities"]] for p in answer["predictions"])


def cmd_download(args: argparse.Namespace) -> int:
    """The model bundle, unpacked into a folder (default: ./ID-model)."""
    folder = Path(args.output or f"{args.id}-model")
    bundle = _client().model_bundle(args.id)
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        names = archive.namelist()
        archive.extractall(folder)  # the server's four fixed names, no paths
    for name in sorted(names):
        print(folder / name)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from app.services import admin

    if args.action == "create":
        if not args.tenant:
            print("usage: trainyard keys create TENANT", file=sys.stderr)
            return 2
        key_id, key = admin.create_key(args.tenant)
        print(f"{key_id}  tenant={args.tenant}\n{key}\n(shown once; store it now)")
    elif args.action == "list" and args.json:
        print_json([{"id": k.id, "tenant": k.tenant_id, "revoked": k.revoked,
                     "created_at": k.created_at.isoformat()} for k in admin.list_keys()])
    elif args.action == "list":
        for k in admin.list_keys():
            state = "revoked" if k.revoked else "active"
            print(f"{k.id}  tenant={k.tenant_id}  {state}  created={k.created_at:%Y-%m-%d}")
    elif not admin.revoke_key(args.tenant or ""):
        print(f"no active key '{args.tenant}'", file=sys.stderr)
        return 1
    else:
        print(f"revoked {args.tenant}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trainyard", description=__doc__, allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true",
                        help="also show the HTTP library's request log lines")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, allow_abbrev=False, parents=[common])

    run = command("run", "API + one worker on the embedded default (foreground)")
    run.add_argument("--port", type=int)
    run.add_argument("--demo", action="store_true", help="submit examples/digits.json and watch")
    run.set_defaults(func=cmd_run)
    api = command("api", "serve the HTTP API")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", type=int)
    api.add_argument("--access-log", action="store_true")
    api.add_argument("--workers", type=int, choices=range(1, 65), metavar="N",
                     help="API processes (default: TRAINYARD_API_WORKERS, else cores/2, 1 to 4)")
    api.set_defaults(func=cmd_api)
    wk = command("worker", "start a Celery worker")
    wk.add_argument("--queues", help="comma-separated (default: TRAINYARD_DEFAULT_QUEUE=cpu)")
    wk.add_argument("--concurrency", type=int, default=1)
    wk.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    wk.add_argument("--hostname", default="trainyard@%h")
    wk.set_defaults(func=cmd_worker)
    command("migrate", "upgrade the schema to head").set_defaults(func=cmd_migrate)
    command("reap", "one reaper pass").set_defaults(func=cmd_reap)
    sm = command("submit", "submit a job spec or an experiment (a JSON file with a 'kind')")
    sm.add_argument("spec")
    sm.add_argument("--watch", action="store_true")
    sm.add_argument("--idempotency-key")
    sm.set_defaults(func=cmd_submit)
    wa = command("watch", "follow a job or an experiment until it ends")
    wa.add_argument("id", help="job_... or exp_...")
    wa.set_defaults(func=cmd_watch)
    jb = command("jobs", "list jobs")
    jb.add_argument("--status")
    jb.add_argument("--tag", action="append", help="carrying this tag (repeatable: all of them)")
    jb.add_argument("--name-prefix")
    jb.add_argument("--order-by", help="a summary figure: val_loss, or descending with '=' "
                    "(--order-by=-test_accuracy)")
    jb.add_argument("--cursor", help="the next page (printed after a full page)")
    jb.add_argument("--limit", type=int, default=20)
    jb.add_argument("--json", action="store_true", help="the API's page as JSON")
    jb.set_defaults(func=cmd_jobs)
    ex = command("experiments", "list experiments")
    ex.add_argument("--status")
    ex.add_argument("--kind")
    ex.add_argument("--limit", type=int, default=20)
    ex.add_argument("--json", action="store_true", help="the API's page as JSON")
    ex.set_defaults(func=cmd_experiments)
    sh = command("show", "one job or experiment (a table; --json: all of it)")
    sh.add_argument("id", help="job_... or exp_...")
    sh.add_argument("--json", action="store_true", help="the API's object as JSON")
    sh.set_defaults(func=cmd_show)
    ks = command("keys", "API keys: create TENANT | list | revoke KEY_ID")
    ks.add_argument("action", choices=["create", "list", "revoke"])
    ks.add_argument("tenant", nargs="?", help="tenant (create) or key id (revoke)")
    ks.add_argument("--json", action="store_true", help="list: the keys as JSON")
    ks.set_defaults(func=cmd_keys)
    mt = command("metrics", "a job's metrics by epoch (a table; --csv or --json for tools)")
    mt.add_argument("id", help="job_...")
    mt.add_argument("--split", action="append", help="only this split (repeatable)")
    mt.add_argument("--name", action="append", help="only this metric (repeatable)")
    shape = mt.add_mutually_exclusive_group()
    shape.add_argument("--csv", action="store_true", help="CSV: epoch, then split_name columns")
    shape.add_argument("--json", action="store_true", help="the points as JSON")
    mt.set_defaults(func=cmd_metrics)
    pl = command("plot", "save a job's or an experiment's plot as SVG or PNG")
    pl.add_argument("id", help="job_... or exp_...")
    pl.add_argument("name", nargs="?", help="which plot (default: the first; a wrong name "
                    "lists them: loss, metric, lr, grad_norm, confusion_matrix for a job)")
    pl.add_argument("-o", "--output", help="file.svg or file.png (default: ID-NAME.svg)")
    pl.set_defaults(func=cmd_plot)
    pr = command("predict", "predictions of a job's model, or of the model an experiment "
                 "produced (bagging, boosting, a sweep's best), for the rows of a CSV or JSON "
                 "file")
    pr.add_argument("id", help="job_... or exp_...")
    pr.add_argument("file", help="FILE.csv (a header of feature names) or FILE.json (rows, "
                    "records, or a predict body)")
    pr.add_argument("-o", "--output", help="write FILE.csv or FILE.json instead of printing")
    pr.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    pr.set_defaults(func=cmd_predict)
    dl = command("download", "a job's model bundle (ONNX, weights, model.json), unpacked")
    dl.add_argument("id", help="job_...")
    dl.add_argument("-o", "--output", help="folder (default: ./ID-model)")
    dl.set_defaults(func=cmd_download)
    manage.add_commands(command)
    return p


SERVER_COMMANDS = ("run", "api", "worker", "migrate", "reap", "keys", *manage.SERVER_COMMANDS)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command in SERVER_COMMANDS:
        setup_server_logging()
    else:
        setup_logging(args.verbose)
    import httpx

    from trainyard.client import ApiFailure

    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        if args.command not in SERVER_COMMANDS:
            raise
        print(f"trainyard {args.command}: needs the server's parts ({exc.name} is not "
              "installed): pip install 'trainyard[worker]' (or 'trainyard[api]' for the API "
              "alone)", file=sys.stderr)
        return 1
    except ApiFailure as exc:  # the API's own message names the field and the reason
        print(f"trainyard {args.command}: {exc}", file=sys.stderr)
        return 1
    except httpx.TransportError as exc:
        print(f"trainyard {args.command}: cannot reach the API ({exc}); is `trainyard run` or "
              "`trainyard api` running, and is TRAINYARD_URL right?", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
