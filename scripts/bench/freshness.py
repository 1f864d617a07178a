#!/usr/bin/env python3
"""Freshness under load, for BENCHMARKS.md: how long after `POST /v1/events`
answers 202 a new user's view is reflected in `POST /v1/recommend` (the answer
stops being a cold start), while the demo generator ingests at a fixed rate.

Usage: scripts/bench/freshness.py [--events-per-s 50000] [--probes 200]
Starts `target/release/freshet run --demo` itself (build it first), on
loopback. Each probe is a user the demo never sends, viewing a demo item;
the probe polls every 0.5 ms and prints percentiles of the delays in ms.
"""
import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request

p = argparse.ArgumentParser()
p.add_argument("--events-per-s", type=int, default=50000)
p.add_argument("--probes", type=int, default=200)
p.add_argument("--warmup-s", type=float, default=5.0)
a = p.parse_args()

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
base = f"http://127.0.0.1:{port}"
data = tempfile.mkdtemp()
server = subprocess.Popen(
    ["target/release/freshet", "run", "--demo", "--demo-rate", str(a.events_per_s),
     "--listen", f"127.0.0.1:{port}", "--data-dir", data],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def post(path, body, ctype="application/json"):
    req = urllib.request.Request(base + path, data=body.encode(), headers={"content-type": ctype}, method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, r.read()


try:
    for _ in range(100):
        try:
            urllib.request.urlopen(base + "/healthz", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    time.sleep(a.warmup_s)
    delays = []
    for n in range(a.probes):
        user = f"probe-{n}-{time.time_ns()}"
        event = {"event_id": f"{user}-e", "type": "view", "user_id": user, "item_id": f"i{n % 50}",
                 "ts": int(time.time() * 1000)}
        status, _ = post("/v1/events", json.dumps(event), "application/x-ndjson")
        assert status == 202, status
        sent = time.perf_counter()
        while True:
            _, body = post("/v1/recommend", json.dumps({"user_id": user, "k": 10}))
            if not json.loads(body)["cold_start"]:
                delays.append((time.perf_counter() - sent) * 1000)
                break
            if time.perf_counter() - sent > 10:
                raise SystemExit(f"probe {n}: not reflected after 10 s")
            time.sleep(0.0005)
        time.sleep(0.02)
    q = statistics.quantiles(delays, n=100)
    print(json.dumps({"events_per_s": a.events_per_s, "probes": len(delays), "p50_ms": round(q[49], 2),
                      "p90_ms": round(q[89], 2), "p99_ms": round(q[98], 2), "max_ms": round(max(delays), 2)}))
finally:
    server.terminate()
    server.wait()
