"""How many requests/s does `genrec serve` take? Starts the real server on 127.0.0.1, sends a fixed
number of /v1/retrieve requests from a few client threads, reports requests/s and p50/p99 latency,
and stops the server. Traffic goes to loopback only.

    python benchmarks/serve_load.py --checkpoint runs/default --requests 500 --concurrency 4
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, seconds: float = 60.0) -> dict:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stdout.read().decode()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                return json.loads(response.read())
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    raise SystemExit("server did not become healthy in time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--history", type=int, default=50, help="history length per request")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    src = str(Path(__file__).resolve().parents[1] / "src")
    server = subprocess.Popen([sys.executable, "-c", f"import sys; sys.path.insert(0, {src!r}); "
                               "from genrec.cli import main; sys.exit(main())", "serve", "--checkpoint",
                               str(args.checkpoint), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, server)
        body = json.dumps({"history": list(range(1, args.history + 1)),
                           "timestamps": list(range(1000, 1000 + args.history)), "k": 10}).encode()

        def one(_: int) -> float:
            request = urllib.request.Request(f"{url}/v1/retrieve", data=body,
                                             headers={"content-type": "application/json"})
            started = time.perf_counter()
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
            return (time.perf_counter() - started) * 1e3

        started = time.perf_counter()
        with ThreadPoolExecutor(args.concurrency) as pool:
            latencies = sorted(pool.map(one, range(args.requests)))
        seconds = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=10)
    result = {"requests": args.requests, "concurrency": args.concurrency, "history": args.history,
              "requests_per_s": args.requests / seconds, "p50_ms": statistics.median(latencies),
              "p99_ms": latencies[int(0.99 * (len(latencies) - 1))], "command": " ".join(sys.argv)}
    print(json.dumps(result, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
