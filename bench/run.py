"""Planbro load benchmark (a benchmark, not a test).

Starts the server under gunicorn on a free loopback port with a fresh data folder, loads
synthetic people with individual plans, measures the FHIR operations over HTTP with
concurrent keep-alive clients (and some again on the server without its audit layer, and a
request to an app that answers at once: the HTTP floor), then the same operations directly
on the store in-process, and how the cost of a search grows with the size of the result
page.

    python bench/run.py --people 10000 --duration 10 --concurrency 8

See bench/README.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))  # run from a checkout without installing

import measure  # noqa: E402
import people  # noqa: E402
import workload  # noqa: E402

from server.app import prepare_store  # noqa: E402
from server.config import Config  # noqa: E402
from server.demo import demo_bundle  # noqa: E402
from server.fhir.search.ast import SearchQuery  # noqa: E402
from server.fhir.search.parse import parse_search  # noqa: E402
from server.fhir.search.registry import Registry  # noqa: E402
from server.fhir.types import STORED_TYPES  # noqa: E402
from server.gunicorn_conf import THREADS, default_workers  # noqa: E402
from server.store.embedded import EmbeddedStore  # noqa: E402
from server.store.journal import end_process  # noqa: E402
from server.store.port import RECORD_TYPES  # noqa: E402

HOST = "127.0.0.1"
TARGETS = {  # operation -> (figure, comparison, value): the goals at 100,000 resources
    "read CarePlan by id": ("per_second", ">=", 1000.0),
    "create CarePlan (5 KB)": ("per_second", ">=", 300.0),
    "search plan by fnr (chained)": ("p50_ms", "<=", 5.0),
    "search plan by fnr (two-step)": ("p50_ms", "<=", 5.0),
    "search tasks by owner+status": ("p50_ms", "<=", 5.0),
}
MUNICIPALITIES = 5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--people", type=int, default=10_000,
                   help="people to load, 10 resources each (default 10000)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per measured operation (default 10)")
    p.add_argument("--max-requests", type=int, default=20_000,
                   help="at most this many operations per measurement (default 20000)")
    p.add_argument("--concurrency", type=int, default=4,
                   help="client threads while loading and for the throughput figures "
                        "(default 4)")
    p.add_argument("--workers", type=int, default=None,
                   help="gunicorn workers (default: as in production, "
                        "server/gunicorn_conf.py: 2 per CPU)")
    p.add_argument("--threads", type=int, default=None,
                   help="gunicorn threads per worker (default: as in production, 1)")
    p.add_argument("--batch", type=int, default=5,
                   help="people per load transaction (default 5: 50 entries)")
    p.add_argument("--base-path", default="/fhir", help="FHIR base path (default /fhir)")
    p.add_argument("--keep", action="store_true", help="keep the data folder afterwards")
    p.add_argument("--from", dest="source", type=Path, metavar="FOLDER",
                   help="measure a copy of a data folder an earlier run kept (--keep) "
                        "instead of loading people (--people and --batch are ignored; the "
                        "load is not measured again)")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON on stdout (progress goes to stderr)")
    args = p.parse_args(argv)
    args.workers = default_workers() if args.workers is None else args.workers
    args.threads = THREADS if args.threads is None else args.threads
    if min(args.people, args.concurrency, args.workers, args.threads, args.batch) < 1:
        p.error("--people, --concurrency, --workers, --threads and --batch must be >= 1")
    if args.source is not None and not (args.source / WORKLOAD_FILE).is_file():
        p.error(f"{args.source} has no {WORKLOAD_FILE}: it is not a folder that "
                "'bench/run.py --keep' kept")
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


AUDITED_APP = "server.app:create_app()"
UNAUDITED_APP = "bench.unaudited:create_app()"  # the same without the audit layer
FLOOR_APP = "bench.floor:app"  # answers at once: what the HTTP server and clients cost
AUDIT_COST_OPERATIONS = ("read CarePlan by id", "search plan by fnr (chained)",
                         "search tasks by owner+status", "update CarePlan (5 KB)",
                         "transaction (20 entries)")


@contextmanager
def server(data: Path, args: argparse.Namespace, app: str = AUDITED_APP,
           planbro: bool = True) -> Iterator[tuple[int, int]]:
    """Run gunicorn on a free loopback port with PLANBRO_DATA=data; yield the port and the
    id of gunicorn's main process (its workers and their records process are below it).
    ``planbro``: the app is Planbro's (the benchmark's client gets a token from it)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI", "PLANBRO_DATA")}
    env["PLANBRO_DATA"] = str(data)
    env["PLANBRO_BASE_URL"] = f"http://{HOST}:{port}{args.base_path}"
    env["PLANBRO_ACCESS_TOKEN_TTL"] = "86400"  # outlives the run
    if planbro:
        client_id, key = register_bench_client(data)
    command = [sys.executable, "-m", "gunicorn", "-c", "python:server.gunicorn_conf",
               "-w", str(args.workers), "--threads", str(args.threads),
               "-b", f"{HOST}:{port}", "--log-level", "warning", app]
    log_path = data / "gunicorn.log"
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log_file,
                                   stderr=subprocess.STDOUT)
    try:
        wait_ready(port, args.base_path, process, log_path)
        if planbro:
            measure.Client.token = bench_token(f"http://{HOST}:{port}/oauth/token", client_id,
                                               key)
        yield port, process.pid
    finally:
        end_process(process, timeout=30)


# An administrative system that may also read the access log (AuditEvents): it sees every
# person's data, so the figures measure the FHIR mechanics plus the audit of each access.
BENCH_SCOPE = "system/*.cruds planbro/admin planbro/audit"


def data_store(data: Path, registry: Registry | None = None) -> EmbeddedStore:
    """The store of a data folder, opened in this process (close it before the server
    starts or after it stopped)."""
    return EmbeddedStore((registry or Registry.load_default()).extract, data / "planbro.db")


def register_bench_client(data: Path) -> tuple[str, Any]:
    """Register the benchmark's own system client (private_key_jwt) in the data folder's
    store, before the server starts."""
    from joserfc import jwk

    from server.auth.clients import ClientRecord, ClientRegistry

    client_id = "bench-system"
    key = jwk.ECKey.generate_key("P-256", parameters={"kid": "bench-1"})
    store = data_store(data)
    try:
        ClientRegistry(store).put(ClientRecord(
            client_id=client_id, name="Benchmark load generator", scope=BENCH_SCOPE,
            jwks={"keys": [{**key.as_dict(private=False), "kid": "bench-1"}]}))
    finally:
        store.close()
    return client_id, key


def bench_token(endpoint: str, client_id: str, key: Any) -> str:
    """An access token through the token endpoint (client_credentials, private_key_jwt)."""
    import urllib.parse
    import urllib.request

    from server.auth.assertion import client_assertion_form

    form = urllib.parse.urlencode({
        "grant_type": "client_credentials", "scope": BENCH_SCOPE,
        **client_assertion_form(client_id, key, alg="ES256", kid="bench-1",
                                audience=endpoint)}).encode()
    with urllib.request.urlopen(endpoint, form, timeout=30) as response:
        token: str = json.loads(response.read())["access_token"]
    return token


def wait_ready(port: int, base_path: str, process: subprocess.Popen, log_path: Path) -> None:
    client = measure.Client(HOST, port, base_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited (code {process.returncode}); see {log_path}")
        try:
            client.request("GET", "/metadata")
            return
        except (OSError, measure.HttpError):
            time.sleep(0.2)
        finally:
            client.close()
    raise SystemExit(f"the server did not answer within 60 s; see {log_path}")


class ThreadClients:
    """One keep-alive client per thread number."""

    def __init__(self, port: int, base_path: str, count: int) -> None:
        self._clients = [measure.Client(HOST, port, base_path) for _ in range(count)]

    def __call__(self, thread: int) -> measure.Client:
        return self._clients[thread]

    def close(self) -> None:
        for client in self._clients:
            client.close()


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def _ids(response: dict[str, Any]) -> list[str]:
    """The ids of a transaction-response, in entry order (from ``Type/id/_history/n``)."""
    return [e["response"]["location"].split("/")[1] for e in response["entry"]]


def load(port: int, args: argparse.Namespace) -> tuple[workload.Loaded, dict[str, Any]]:
    """Load the demo data (the organisations and personnel plans name), the municipalities,
    then ``args.people`` people in transactions of ``args.batch`` people from
    ``args.concurrency`` threads."""
    loaded = workload.Loaded()
    setup = measure.Client(HOST, port, args.base_path)
    setup.request("POST", "", demo_bundle())
    orgs = [{"request": {"method": "POST", "url": "Organization"},
             "resource": people.municipality(i)} for i in range(MUNICIPALITIES)]
    loaded.municipalities = _ids(setup.request("POST", "", people.transaction(orgs)))
    setup.close()
    refs = [f"Organization/{m}" for m in loaded.municipalities]
    batches = [range(start, min(start + args.batch, args.people))
               for start in range(0, args.people, args.batch)]
    local = threading.local()
    done, lock, begin = [0], threading.Lock(), time.perf_counter()
    every = max(1, args.people // 20)

    def send(batch: range) -> list[workload.Person]:
        if not hasattr(local, "client"):
            local.client = measure.Client(HOST, port, args.base_path)
        per_person = [people.person_entries(i, refs) for i in batch]
        ids = _ids(local.client.request(
            "POST", "", people.transaction([e for p in per_person for e in p])))
        out = []
        for n, i in enumerate(batch):
            mine = ids[n * people.RESOURCES_PER_PERSON:(n + 1) * people.RESOURCES_PER_PERSON]
            out.append(workload.Person(
                index=i, fnr=people.fnr_of(i), patient=mine[0], goals=tuple(mine[1:4]),
                team=mine[4], plan=mine[6], org=loaded.municipalities[i % MUNICIPALITIES]))
        with lock:
            before = done[0]
            done[0] += len(batch)
            if done[0] // every != before // every or done[0] == args.people:
                rate = done[0] * people.RESOURCES_PER_PERSON / (time.perf_counter() - begin)
                log(f"  loaded {done[0]:>7} / {args.people} people ({rate:,.0f} resources/s)")
        return out

    with ThreadPoolExecutor(args.concurrency) as pool:
        for persons in pool.map(send, batches):
            loaded.people.extend(persons)
    seconds = time.perf_counter() - begin
    loaded.next_index = itertools.count(args.people)
    resources = args.people * people.RESOURCES_PER_PERSON + MUNICIPALITIES
    plan_bytes = len(json.dumps(loaded.plan_body(loaded.people[0]), ensure_ascii=False)
                     .encode())
    return loaded, {"people": args.people, "resources": resources,
                    "seconds": round(seconds, 1),
                    "resources_per_second": round(resources / seconds, 1),
                    "careplan_bytes": plan_bytes}


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

Phase = dict[str, dict[str, measure.Stats]]  # "latency" | "throughput" -> operation -> stats


def machine_speed() -> float:
    """:func:`measure.calibrate` on the demo data (ms, lower is faster)."""
    return measure.calibrate(_CALIBRATION_SAMPLE)


_CALIBRATION_SAMPLE = demo_bundle()


def measure_all(make: Callable[[int], dict[str, measure.Operation]],
                args: argparse.Namespace, side: str, server_pid: int | None = None) -> Phase:
    """Each operation twice: from one client (latency without queueing) and from
    ``args.concurrency`` clients (throughput). ``make(n)`` builds the operations for n
    threads; ``server_pid``: the server's process, whose CPU time per operation is
    measured."""
    out: Phase = {}
    for label, threads in (("latency", 1), ("throughput", args.concurrency)):
        out[label] = {}
        for name, operation in make(threads).items():
            stats = measure.run(name, operation, concurrency=threads, duration=args.duration,
                                max_count=args.max_requests, server=server_pid,
                                speed=machine_speed if label == "throughput" else None)
            log(f"  {side} x{threads}: {name:<32} {stats.per_second:>9,.1f}/s  "
                f"p50 {stats.p50_ms:.2f} ms"
                + (f"  server CPU {stats.server_cpu_ms:.2f} ms/op"
                   if stats.server_cpu_ms is not None else "")
                + (f"  machine busy {stats.machine_busy_pct:.0f}%"
                   if stats.machine_busy_pct is not None else "")
                + (f"  {stats.errors} errors, first: {stats.first_error}"
                   if stats.errors else ""))
            out[label][name] = stats
    return out


def search_sizes(run_search: Callable[[int], int], repeat: int) -> list[dict[str, Any]]:
    """p50 of one page of ``count`` results for each count, from one client.
    ``run_search(count)`` returns the number of results it got."""
    rows = []
    for count in workload.SEARCH_SIZES:
        got = run_search(count)  # warm-up, and the real page size
        stats = measure.run(f"_count={count}", lambda _t, c=count: run_search(c),
                            concurrency=1, duration=60, max_count=repeat)
        rows.append({"count": count, "results": got, "p50_ms": stats.p50_ms,
                     "ms_per_result": round(stats.p50_ms / got, 4) if got else None})
    return rows


def http_phase(port: int, pid: int, loaded: workload.Loaded,
               args: argparse.Namespace) -> tuple[Phase, list[dict[str, Any]]]:
    clients = ThreadClients(port, args.base_path, args.concurrency)
    try:
        phase = measure_all(lambda n: workload.http_operations(clients, loaded, n), args,
                            "http", pid)

        def page(count: int) -> int:
            path = "/Goal?" + "&".join(f"{k}={v}" for k, v in workload.search_size_params(count))
            return len(clients(0).request("GET", path).get("entry") or [])

        return phase, search_sizes(page, repeat=30)
    finally:
        clients.close()


def audit_cost_phase(data: Path, loaded: workload.Loaded, args: argparse.Namespace,
                     audited: Phase) -> dict[str, dict[str, Any]]:
    """The operations of :data:`AUDIT_COST_OPERATIONS` again on a server without the audit
    layer (same data): the cost of auditing per request, as ratios."""
    with server(data, args, UNAUDITED_APP) as (port, pid):
        clients = ThreadClients(port, args.base_path, args.concurrency)
        try:
            plain = measure_all(lambda n: {
                name: op for name, op in workload.http_operations(clients, loaded, n).items()
                if name in AUDIT_COST_OPERATIONS}, args, "http unaudited", pid)
        finally:
            clients.close()
    out = {}
    for name in AUDIT_COST_OPERATIONS:
        with_audit, without = audited["latency"][name], plain["latency"][name]
        busy, idle = audited["throughput"][name], plain["throughput"][name]
        out[name] = {"audited_p50_ms": with_audit.p50_ms, "unaudited_p50_ms": without.p50_ms,
                     "latency_ratio": round(with_audit.p50_ms / without.p50_ms, 2)
                     if without.p50_ms else None,
                     "audited_per_second": busy.per_second,
                     "unaudited_per_second": idle.per_second,
                     "throughput_ratio": round(idle.per_second / busy.per_second, 2)
                     if busy.per_second else None,
                     "audited_server_cpu_ms": busy.server_cpu_ms,
                     "unaudited_server_cpu_ms": idle.server_cpu_ms}
    return out


FLOOR = "answered at once"


def floor_phase(data: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """A request to an app that answers at once (:data:`FLOOR_APP`), under the same
    gunicorn, from one client and from ``args.concurrency`` clients: what every figure
    costs before the server does anything."""
    with server(data, args, FLOOR_APP, planbro=False) as (port, pid):
        clients = ThreadClients(port, args.base_path, args.concurrency)
        try:
            phase = measure_all(lambda n: {FLOOR: lambda t: clients(t).request(
                "GET", "/Basic/floor")}, args, "http floor", pid)
        finally:
            clients.close()
    return {label: stats[FLOOR].as_dict() for label, stats in phase.items()}


def direct_phase(data: Path, loaded: workload.Loaded,
                 args: argparse.Namespace) -> tuple[Phase, list[dict[str, Any]]]:
    registry = Registry.load_default()
    store = data_store(data, registry)
    try:
        phase = measure_all(
            lambda n: workload.direct_operations(store, registry, loaded, n), args, "store")

        def page(count: int) -> int:
            query = parse_search(registry, "Goal", workload.search_size_params(count)).query
            return len(store.search(query).resources)

        return phase, search_sizes(page, repeat=30)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def target_rows(http: dict[str, dict[str, Any]], resources: int) -> list[dict[str, Any]]:
    """Throughput targets against the concurrent run, latency targets against one client."""
    rows = []
    for name, (figure, comparison, goal) in TARGETS.items():
        run_kind = "throughput" if figure == "per_second" else "latency"
        value = http[run_kind][name][figure]
        met = value >= goal if comparison == ">=" else value <= goal
        rows.append({"operation": name, "figure": figure, "run": run_kind, "value": value,
                     "target": f"{comparison} {goal:g}", "met": met,
                     "at_resources": resources})
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _speed(value: list[float] | tuple[float, float] | None) -> str:
    return "-" if not value else f"{value[0]:.1f}-{value[1]:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b else "-"


def _table(title: str, header: str, rows: list[str]) -> None:
    print(f"{title}\n{header}\n{'-' * len(header)}")
    for row in rows:
        print(row)
    print()


def report(result: dict[str, Any]) -> None:
    load_info, cfg = result["load"], result["config"]
    http, direct = result["http"], result["direct"]
    if "copied_from" in load_info:
        print(f"\nMeasured on a copy of {load_info['copied_from']}: "
              f"{load_info['resources']:,} resources (besides the audit records). The run that "
              f"loaded its {load_info['people']:,} people stored "
              f"{load_info['loaded_resources']:,} resources in {load_info['seconds']} s "
              f"({load_info['resources_per_second']:,.0f}/s).")
    else:
        print(f"\nLoaded {load_info['resources']:,} resources ({load_info['people']:,} people) "
              f"in {load_info['seconds']} s: {load_info['resources_per_second']:,.0f} "
              "resources/s.")
    print(f"A CarePlan is {load_info['careplan_bytes']:,} bytes.")
    print(f"gunicorn {cfg['workers']} workers x {cfg['threads']} threads; {cfg['duration']} s "
          f"or {cfg['max_requests']:,} operations per figure; {os.cpu_count()} CPUs shared by "
          "server and clients.\n'store' = the same operation on the store in-process (no HTTP, "
          "Flask, validation or FHIR service).\n")
    _table("Latency, one client at a time (ms):",
           f"{'operation':<32} {'HTTP p50':>9} {'p95':>7} {'p99':>7} {'store p50':>10} "
           f"{'p95':>7} {'p99':>7} {'HTTP/store':>10}",
           [f"{name:<32} {h['p50_ms']:>9.2f} {h['p95_ms']:>7.2f} {h['p99_ms']:>7.2f} "
            f"{d['p50_ms']:>10.2f} {d['p95_ms']:>7.2f} {d['p99_ms']:>7.2f} "
            f"{_ratio(h['p50_ms'], d['p50_ms']):>10}"
            for name, h, d in _pairs(http["latency"], direct["latency"])])
    _table(f"Throughput, {cfg['concurrency']} concurrent clients (operations/s, ms; server "
           "CPU = CPU time of all the server's processes per operation; busy = share of the "
           "machine's CPUs in use meanwhile; speed = the machine's speed right before and "
           "after, as below):",
           f"{'operation':<32} {'HTTP/s':>9} {'p50':>7} {'p99':>8} {'server CPU':>10} "
           f"{'busy':>5} {'speed':>11} {'store/s':>9} {'p50':>7} {'p99':>8} {'store/HTTP':>10} "
           f"{'errors':>6}",
           [f"{name:<32} {h['per_second']:>9,.1f} {h['p50_ms']:>7.2f} {h['p99_ms']:>8.2f} "
            f"{_ms(h['server_cpu_ms']):>10} {_pct(h['machine_busy_pct']):>5} "
            f"{_speed(h['speed_ms']):>11} "
            f"{d['per_second']:>9,.1f} {d['p50_ms']:>7.2f} {d['p99_ms']:>8.2f} "
            f"{_ratio(d['per_second'], h['per_second']):>10} {_errors(http, direct, name):>6}"
            for name, h, d in _pairs(http["throughput"], direct["throughput"])])
    print("Search cost vs result size (Goal?lifecycle-status=active, one page, one client):")
    for side, rows in result["search_size"].items():
        print(f"  {'HTTP ' if side == 'http' else 'store'}: " + "; ".join(
            f"{r['results']:>4} results {r['p50_ms']:>7.2f} ms" for r in rows))
        first, last = rows[0], rows[-1]
        if first["p50_ms"] and first["results"] and last["results"]:
            cost = last["p50_ms"] / first["p50_ms"]
            size = last["results"] / first["results"]
            verdict = "no faster than" if cost <= size else "FASTER than"
            print(f"         {size:.0f}x the results cost {cost:.1f}x the time: grows "
                  f"{verdict} the result size")
    _table("Cost of auditing (AuditEvent per access, Provenance per write) - the same "
           "server without its audit layer:",
           f"{'operation':<32} {'p50 audited':>11} {'unaudited':>10} {'ratio':>6} "
           f"{'/s audited':>11} {'unaudited':>10} {'ratio':>6} {'CPU audited':>11} "
           f"{'unaudited':>10}",
           [f"{name:<32} {c['audited_p50_ms']:>11.2f} {c['unaudited_p50_ms']:>10.2f} "
            f"{c['latency_ratio'] or 0:>5.2f}x {c['audited_per_second']:>11,.1f} "
            f"{c['unaudited_per_second']:>10,.1f} {c['throughput_ratio'] or 0:>5.2f}x "
            f"{_ms(c['audited_server_cpu_ms']):>11} {_ms(c['unaudited_server_cpu_ms']):>10}"
            for name, c in result["audit_cost"].items()])
    low, busy = result["floor"]["latency"], result["floor"]["throughput"]
    print(f"\nHTTP floor - the same gunicorn and clients, an app that answers at once "
          f"(bench/floor.py): one client p50 {low['p50_ms']:.2f} ms, server CPU "
          f"{_ms(low['server_cpu_ms'])} ms; {cfg['concurrency']} clients "
          f"{busy['per_second']:,.1f}/s, server CPU {_ms(busy['server_cpu_ms'])} ms a request.")
    print("\nMachine speed (ms for the calibration workload, lower is faster; runs compare "
          "only as far as these do): " + ", ".join(
              f"{when.replace('_', ' ')} {ms}" for when, ms in result["calibration"].items()))
    print(f"\nTargets (defined at 100,000 resources; this run: {load_info['resources']:,}):")
    for row in result["targets"]:
        unit = "/s" if row["figure"] == "per_second" else " ms p50"
        clients = f"{cfg['concurrency']} clients" if row["run"] == "throughput" else "1 client"
        speed = result["http"][row["run"]][row["operation"]].get("speed_ms")
        at = f"; machine speed {_speed(speed)} ms" if speed else ""
        print(f"  {'MET ' if row['met'] else 'MISS'} {row['operation']:<32} "
              f"{row['value']:>9,.2f}{unit} (target {row['target']}{unit}, {clients}{at})")


def _pairs(http: dict[str, Any], direct: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(name, http[name], direct[name]) for name in http]


def _errors(http: dict[str, Any], direct: dict[str, Any], name: str) -> int:
    return sum(side[run][name]["errors"] for side in (http, direct)
               for run in ("latency", "throughput"))


def _as_dicts(phase: Phase) -> dict[str, dict[str, Any]]:
    return {run: {name: stats.as_dict() for name, stats in ops.items()}
            for run, ops in phase.items()}


def stored_resources(data: Path) -> int:
    """The current FHIR resources in the data folder's store, as the load counts them: not
    the audit records (AuditEvents, Provenances) nor the server's own (access grants)."""
    store = data_store(data)
    try:
        return sum(store.search(SearchQuery(type_, count=0, total=True)).total or 0
                   for type_ in sorted(set(STORED_TYPES) - RECORD_TYPES))
    finally:
        store.close()


WORKLOAD_FILE = "bench-workload.json"
"""What a run loaded, in its data folder (for ``--from``)."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data = Path(tempfile.mkdtemp(prefix="planbro-bench-"))
    log(f"data folder: {data}")
    calibration = {"start": machine_speed()}
    log(f"machine speed: {calibration['start']} ms for the calibration workload")
    try:
        if args.source is not None:
            log(f"copying {args.source}")
            shutil.copytree(args.source, data, dirs_exist_ok=True)
            # A copy of an older run's data may be indexed by other rules: it is brought up
            # to this server's first, not while the run waits (a minute) for the server to
            # answer. The workload holds no absolute references: any base URL reads it.
            prepare_store(Config(data_dir=data, base_url=f"http://{HOST}{args.base_path}"),
                          log=log)
            loaded, loaded_info = workload.Loaded.read(data / WORKLOAD_FILE)
            load_info = {**loaded_info, "copied_from": str(args.source),
                         "loaded_resources": loaded_info["resources"],
                         "resources": stored_resources(data)}
        with server(data, args) as (port, pid):
            if args.source is None:
                log(f"server on http://{HOST}:{port}{args.base_path}; "
                    f"loading {args.people} people")
                loaded, load_info = load(port, args)
                loaded_info = load_info
            log("measuring over HTTP")
            measure.settle(pid)
            calibration["before_http"] = machine_speed()
            http, http_sizes = http_phase(port, pid, loaded, args)
            measure.settle(pid)
            calibration["after_http"] = machine_speed()
        log("measuring the cost of auditing (the same server without its audit layer)")
        audit_cost = audit_cost_phase(data, loaded, args, http)
        log("measuring the HTTP floor (an app that answers at once, under the same gunicorn)")
        floor = floor_phase(data, args)
        log("measuring directly on the store")
        direct, direct_sizes = direct_phase(data, loaded, args)
        calibration["end"] = machine_speed()
        if args.keep:  # for --from: the people, and the number the next new one gets
            loaded.save(data / WORKLOAD_FILE, loaded_info)
    finally:
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
    result: dict[str, Any] = {
        "config": {**{k: getattr(args, k) for k in ("duration", "max_requests",
                                                     "concurrency", "workers", "threads")},
                   "people": load_info["people"]},
        "cpus": os.cpu_count(),
        "load": load_info,
        "http": _as_dicts(http),
        "direct": _as_dicts(direct),
        "search_size": {"http": http_sizes, "direct": direct_sizes},
        "audit_cost": audit_cost,
        "floor": floor,
        "calibration": calibration,
    }
    result["targets"] = target_rows(result["http"], load_info["resources"])
    if args.keep:
        result["data"] = str(data)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        report(result)
        if args.keep:
            print(f"\nData kept in {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
