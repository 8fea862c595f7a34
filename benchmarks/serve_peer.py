"""`retrain serve` against `mlflow models serve`, the same model, the same load, one run.

    make bench-serve-peer     # a few minutes; writes the peer section of benchmarks/results.md

Needs MLflow (`pip install '.[mlflow]'`; the Makefile target makes `.venv-mlflow` for it,
since MLflow 3.17 pins pyarrow below 26).

1. One model version is trained the way the flow trains it (the shipped config: its schema
   and estimator), registered and made current in a temporary home, and exported to MLflow
   (a local SQLite tracking store) by retrain's own export: `models:/retrain@champion`.
2. Both servers run as real subprocesses on loopback with the same number of processes
   (`--workers`): `retrain serve` (micro-batching on, its defaults) and
   `mlflow models serve --env-manager local` on the exported model.
3. The same closed-loop load at 1, 8 and 32 concurrent clients: each client sends one row
   per request on a kept-alive connection and sends the next when the answer is in. The
   clients are coroutines on raw sockets in this process (a few microseconds per request,
   so the client's cost hardly weighs on the two servers). Each level runs in alternating
   halves, retrain, MLflow, retrain, MLflow, so that the load of others on the machine falls
   on both alike; each half is bounded in time and in requests.
4. Single-row p50 of `retrain serve` against in-process predict + an empty FastAPI route
   (benchmarks/serve_load.py's measurement, in the same run).

Targets: at 32 clients retrain's throughput at least 2x MLflow's with a p99 no higher; at 1
client retrain's p50 no higher than MLflow's; single-row p50 at most 3x predict + empty route.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from serve_load import (  # noqa: E402
    ROW,
    Process,
    percentile,
    register,
    single_row,
    train_versions,
    write_section,
)

from flows.models.registry import ModelRegistry  # noqa: E402
from service.config import load_settings  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results.md"
SECTION_START = "<!-- serving-peer: written by benchmarks/serve_peer.py -->"
SECTION_END = "<!-- /serving-peer -->"
HOST = "127.0.0.1"
LEVELS = (1, 8, 32)


# -- the load ------------------------------------------------------------------------------------

def request_bytes(port: int, path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def one_client(port: int, request: bytes, deadline: float, budget: list[int],
                     latencies: list[float], failures: list[str]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200"):
                failures.append(head.split(b"\r\n", 1)[0].decode() + " " + body[:200].decode(errors="replace"))
    finally:
        writer.close()


async def load(port: int, path: str, body: bytes, clients: int, seconds: float, max_requests: int) -> dict:
    latencies: list[float] = []
    failures: list[str] = []
    request = request_bytes(port, path, body)
    started = time.perf_counter()
    await asyncio.gather(*(one_client(port, request, started + seconds, [max_requests // clients + 1],
                                      latencies, failures) for _ in range(clients)))
    return {"latencies": latencies, "failures": failures, "seconds": time.perf_counter() - started}


def measure(servers: dict[str, tuple[int, str, bytes]], clients: int, seconds: float, max_requests: int) -> dict:
    """Each server for two halves of ``seconds``, alternating; the halves are added up."""
    results = {name: {"latencies": [], "failures": [], "seconds": 0.0} for name in servers}
    for _ in range(2):
        for name, (port, path, body) in servers.items():
            asyncio.run(load(port, path, body, clients, 1.0, clients))  # warm the connections
            half = asyncio.run(load(port, path, body, clients, seconds / 2, max_requests // 2))
            for key in ("latencies", "failures"):
                results[name][key] += half[key]
            results[name]["seconds"] += half["seconds"]
    return {name: summary(r) for name, r in results.items()}


def summary(result: dict) -> dict:
    latencies = result["latencies"]
    return {"requests": len(latencies), "throughput": len(latencies) / result["seconds"],
            "p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99),
            "failures": len(result["failures"]), "failure_examples": result["failures"][:3]}


# -- the servers ---------------------------------------------------------------------------------

def prepare(work: Path) -> tuple[Path, dict[str, str], object]:
    """A home with one deployed version, exported to a local MLflow store."""
    from service.integrations.mlflow_export import sync

    trained = train_versions(work, 1, 5000)[0]
    home = work / "home"
    (home / "state").mkdir(parents=True)
    registry = ModelRegistry(home / "registry")
    registry.promote(register(registry, trained))
    tracking = f"sqlite:///{work / 'mlflow.db'}"
    environ = {"RETRAIN_HOME": str(home), "RETRAIN_MLFLOW__TRACKING_URI": tracking}
    sync(load_settings(ROOT / "config" / "retrain.toml", environ=environ))
    return home, {"MLFLOW_TRACKING_URI": tracking}, trained


def start_servers(servers: dict[str, Process], work: Path, home: Path, mlflow_env: dict[str, str],
                  workers: int) -> None:
    """Into ``servers`` one by one, so that the caller stops those that started."""
    servers.update({"retrain": Process([sys.executable, "-m", "service.cli", "serve", "--home", str(home),
                                   "--port", "0", "--workers", str(workers)], work / "retrain.log",
                                  rf"serving predictions on http://{HOST}:(\d+)")})
    port = free_port()
    os.environ.update(mlflow_env)
    # mlflow models serve runs `uvicorn` by name: this interpreter's scripts first.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    mlflow = Process([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/retrain@champion",
                      "--env-manager", "local", "--host", HOST, "--port", str(port), "--workers", str(workers)],
                     work / "mlflow.log", rf"(?:Uvicorn running on|Listening at:) http://{HOST}:({port})")
    servers["mlflow"] = mlflow
    servers["empty"] = Process([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--empty-app"],
                               work / "empty.log", rf"empty app on http://{HOST}:(\d+)")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def ready(base: str, path: str, body: bytes, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{base}{path}", content=body, headers={"content-type": "application/json"},
                          timeout=30).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{base}{path} never answered 200")


# -- the report ----------------------------------------------------------------------------------

def render(levels: dict[int, dict], single: dict, args: argparse.Namespace, machine: str) -> str:
    ms = lambda s: f"{s * 1000:.1f} ms"  # noqa: E731
    top, one = levels[max(levels)], levels[min(levels)]
    throughput_ratio = top["retrain"]["throughput"] / top["mlflow"]["throughput"]
    checks = [
        (f"throughput at {max(levels)} clients", f"{throughput_ratio:.2f}x MLflow's", ">= 2x", throughput_ratio >= 2),
        (f"p99 at {max(levels)} clients", f"{ms(top['retrain']['p99'])} vs {ms(top['mlflow']['p99'])}",
         "no higher", top["retrain"]["p99"] <= top["mlflow"]["p99"]),
        (f"p50 at {min(levels)} client", f"{ms(one['retrain']['p50'])} vs {ms(one['mlflow']['p50'])}",
         "no higher", one["retrain"]["p50"] <= one["mlflow"]["p50"]),
        ("single-row p50", f"server {ms(single['server'])} vs in-process predict {ms(single['predict'])} + "
         f"empty route {ms(single['empty'])}: {single['ratio']:.2f}x", "<= 3x", single["ratio"] <= 3),
    ]
    lines = [
        SECTION_START, "## Serving against `mlflow models serve` (`make bench-serve-peer`)", "",
        f"Machine: {machine}. Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} by "
        f"`benchmarks/serve_peer.py`: the same deployed model (the shipped config, the default estimator) served "
        f"by `retrain serve` and, exported by retrain's MLflow export, by `mlflow models serve --env-manager local` "
        f"(MLflow {mlflow_version()}), each with {args.workers} processes; one row per request on loopback; "
        f"closed-loop clients on kept-alive connections, each level {args.seconds:.0f} s per server in alternating "
        f"halves (at most {args.max_requests:,} requests). The machine is shared with other work: load average "
        f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end.", "",
        "| clients | server | requests | throughput | p50 | p99 | failed |", "|---|---|---|---|---|---|---|",
    ]
    for clients, result in levels.items():
        for name in ("retrain", "mlflow"):
            r = result[name]
            lines.append(f"| {clients} | {name} | {r['requests']:,} | {r['throughput']:,.0f}/s | {ms(r['p50'])} | "
                         f"{ms(r['p99'])} | {r['failures']} |")
    lines += ["", "| target | result | wanted | |", "|---|---|---|---|"]
    lines += [f"| {name} | {result} | {wanted} | {'met' if ok else 'missed'} |" for name, result, wanted, ok in checks]
    failures = [e for result in levels.values() for r in result.values() for e in r["failure_examples"]]
    if failures:
        lines += ["", f"- Failed requests, first ones: {'; '.join(failures[:3])}"]
    return "\n".join([*lines, SECTION_END, ""])


def mlflow_version() -> str:
    from importlib.metadata import version

    return version("mlflow")


def main() -> int:
    parser = argparse.ArgumentParser(description="retrain serve against mlflow models serve, same model and load.")
    parser.add_argument("--workers", type=int, default=2, help="processes of each server (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per server and level (default 10)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per server and level")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)), help="client counts (default 1,8,32)")
    parser.add_argument("--rounds", type=int, default=6, help="single-row rounds (default 6)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="retrain-bench-peer-"))
    servers: dict[str, Process] = {}
    try:
        print("[bench-serve-peer] training and exporting the model", flush=True)
        home, mlflow_env, trained = prepare(work)
        start_servers(servers, work, home, mlflow_env, args.workers)
        row = json.dumps([ROW]).encode()
        targets = {"retrain": (int(servers["retrain"].base.rsplit(":", 1)[1]), "/predict", row),
                   "mlflow": (int(servers["mlflow"].base.rsplit(":", 1)[1]), "/invocations",
                              json.dumps({"dataframe_records": [ROW]}).encode())}
        for name, (port, path, body) in targets.items():
            ready(f"http://{HOST}:{port}", path, body)
            # Every server process answers a while before anything is measured (MLflow's load
            # their model at their first request).
            asyncio.run(load(port, path, body, 16, 5.0, 100_000))
        levels = {}
        for clients in (int(c) for c in args.levels.split(",")):
            print(f"[bench-serve-peer] {clients} client(s)", flush=True)
            levels[clients] = measure(targets, clients, args.seconds, args.max_requests)
        print("[bench-serve-peer] single-row latency", flush=True)
        model = ModelRegistry(home / "registry").load_model("v0001")
        single = single_row(servers["retrain"].base, servers["empty"].base, model, trained.schema, args.rounds, 50)
    finally:
        codes = {name: s.stop() for name, s in servers.items()}
        shutil.rmtree(work, ignore_errors=True)
    from run import machine

    section = render(levels, single, args, machine())
    write_section(args.out, section, SECTION_START, SECTION_END)
    print(section)
    print(f"[bench-serve-peer] written to {args.out}; servers exited with {codes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
