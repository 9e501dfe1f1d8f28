"""`carseg serve` under hostile load: concurrent clients, good photos mixed with bad input.

    python -m benchmarks.serve_load --artifacts demo/artifacts [--requests 1000] [--clients 4]

One replica on a free port; 4 clients send `--requests` requests in all, drawn in a fixed order
from: photos (the demo's size and a few large ones), truncated and empty bodies, text, a
TIFF, a JPEG of 3,000 scans, a PNG header claiming 100,000 x 100,000 pixels, a declared
length over the limit, a chunked body over the limit, and a large photo whose client hangs up
once it is sent (no answer read: code 0). Meanwhile a prober asks /healthz
every 100 ms, and the replica's resident memory is sampled. It reports the status codes (no
5xx is the bar), the slowest /healthz answer (1 s is the bar), the replica's memory after
warm-up, at its peak, and once the load has stopped (within 10% of after warm-up is the bar),
and writes serve_load.json and serve_load.md to out/benchmarks/<device>/ (or, with --commit,
benchmarks/results/<device>/).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import socket
import struct
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks import measure as M
from benchmarks.run import page_folder, write_page


def _jpeg(rgb: np.ndarray, **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def bodies(photo: Path) -> list[tuple[str, bytes, str, bool]]:
    """(kind, body, content type, how it is sent: plain, chunked or hang up) for each kind of
    request."""
    rgb = np.asarray(Image.open(photo).convert("RGB"))
    good = _jpeg(rgb)
    big = _jpeg(np.asarray(Image.fromarray(rgb).resize((4800, 3200))))  # 15 MP
    sos = good.index(b"\xff\xda")
    scans = good[:sos] + good[sos:-2] * 3000 + b"\xff\xd9"
    png = io.BytesIO()
    Image.new("RGB", (1, 1)).save(png, format="PNG")
    huge = bytearray(png.getvalue())
    huge[16:24] = struct.pack(">II", 100_000, 100_000)
    huge[29:33] = struct.pack(">I", zlib.crc32(bytes(huge[12:29])))  # a valid IHDR checksum
    tiff = io.BytesIO()
    Image.fromarray(rgb[:64, :64]).save(tiff, format="TIFF")
    return [("photo", good, "image/jpeg", "plain"), ("photo, no content type", good, "", "plain"),
            ("large photo", big, "image/jpeg", "plain"),
            ("truncated", good[:500], "image/jpeg", "plain"),
            ("empty", b"", "image/png", "plain"),
            ("text", b"not an image\n" * 10, "text/plain", "plain"),
            ("tiff", tiff.getvalue(), "application/octet-stream", "plain"),
            ("3000 scans", scans, "image/jpeg", "plain"),
            ("100k x 100k header", bytes(huge), "image/png", "plain"),
            ("chunked, over the limit", b"\xff" * (70 << 20), "image/jpeg", "chunked"),
            ("large photo, client hangs up", big, "image/jpeg", "hang up")]


def request(port: int, body: bytes, ctype: str, how: str) -> int:
    """Send one request; its status code, or 0 for a client that hung up unanswered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.putrequest("POST", "/v1/segment")
        if ctype:
            conn.putheader("Content-Type", ctype)
        if how == "chunked":
            conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            step = 1 << 20
            try:
                for i in range(0, len(body), step):
                    part = body[i:i + step]
                    conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                conn.send(b"0\r\n\r\n")
            except OSError:
                pass  # the server may answer 413 and close before the body ends
        else:
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            conn.send(body)
            if how == "hang up":
                time.sleep(0.2)  # the replica is decoding by now
                return 0
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def _wait_until_idle(port: int, quiet_s: float = 3.0, most_s: float = 120.0) -> float:
    """Seconds until the replica's count of finished requests (/v1/stats: answered, and
    cancelled as 499) stops moving for `quiet_s`."""
    t0 = last_change = time.perf_counter()
    last, polls = -1, 0
    while time.perf_counter() - t0 < most_s:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/v1/stats")
        # each earlier poll is counted too (a 200), this one not yet
        total = sum(json.loads(conn.getresponse().read())["responses"].values()) - polls
        polls += 1
        conn.close()
        now = time.perf_counter()
        if total != last:
            last, last_change = total, now
        elif now - last_change >= quiet_s:
            break
        time.sleep(0.5)
    return round(last_change - t0, 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replica_rss() -> float | None:
    """The replica's resident memory in MiB (the process Ray names ServeReplica:carseg)."""
    import psutil

    for p in psutil.process_iter(["cmdline"]):
        try:
            if any("ServeReplica:carseg" in a for a in p.info["cmdline"] or []):
                return p.memory_info().rss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def run(artifacts: Path, photo: Path, n: int, clients: int) -> dict[str, Any]:
    import ray
    from ray import serve

    from carseg.apps.serve import MAX_PIXELS, PIXEL_BUDGET, build_app

    port = _free_port()
    ray.init(include_dashboard=False, logging_level="ERROR", num_cpus=3)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(artifacts, replicas=1, max_batch=4), name="carseg", route_prefix="/")
    kinds = bodies(photo)
    try:
        for _ in range(3):  # warm-up: the model, the allocator, each code path once
            for _kind, body, ctype, how in kinds:
                request(port, body, ctype, how)
        _wait_until_idle(port)  # both readings the same way: idle, then 5 s
        time.sleep(5)
        after_warmup = _replica_rss()
        stop = threading.Event()
        health: list[float] = []
        rss: list[float] = []

        def probe() -> None:
            while not stop.is_set():
                t0 = time.perf_counter()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                conn.close()
                health.append(time.perf_counter() - t0)
                if (m := _replica_rss()) is not None:
                    rss.append(m)
                stop.wait(0.1)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        plan = [kinds[i % len(kinds)] for i in range(n)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            codes = list(pool.map(lambda k: (k[0], request(port, k[1], k[2], k[3])), plan))
        seconds = time.perf_counter() - t0
        stop.set()
        prober.join()
        settle = _wait_until_idle(port)  # hung-up requests may still be in the replica
        time.sleep(5)
        after_load = _replica_rss()
    finally:
        serve.shutdown()
        ray.shutdown()
    by_kind: dict[str, Counter[int]] = {}
    for kind, code in codes:
        by_kind.setdefault(kind, Counter())[code] += 1
    statuses = Counter(code for _, code in codes)
    return {
        "requests": n, "clients": clients, "seconds": round(seconds, 1), "settle_s": settle,
        "status_codes": {str(k): v for k, v in sorted(statuses.items())},
        "by_kind": {k: {str(c): v for c, v in sorted(cs.items())} for k, cs in by_kind.items()},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "healthz_max_s": round(max(health), 3), "healthz_p50_s": round(float(np.median(health)), 4),
        "healthz_probes": len(health),
        "replica_rss_mib": {"after_warmup": after_warmup, "peak": max(rss) if rss else None,
                            "after_load": after_load},
        "limits": {"max_pixels": MAX_PIXELS, "pixel_budget": PIXEL_BUDGET},
    }


def markdown(r: dict[str, Any], device: str, command: str) -> str:
    m = r["replica_rss_mib"]
    back = (m["after_load"] - m["after_warmup"]) / m["after_warmup"] * 100
    lines = [f"# carseg serve under hostile load: {device}", "",
             f"{r['requests']} requests from {r['clients']} clients in {r['seconds']} s, "
             f"{time.strftime('%Y-%m-%d')}; the replica finished its last request "
             f"{r['settle_s']} s after the clients stopped, and its memory was read 5 s later (as "
             f"after warm-up). "
             f"Command: `{command}`", "",
             "| what | measured | bar |", "| --- | ---: | --- |",
             f"| responses 5xx | {r['server_errors']} | 0 |",
             f"| slowest /healthz during the load ({r['healthz_probes']} probes) | "
             f"{r['healthz_max_s']:.3f} s | <= 1 s |",
             f"| replica memory after warm-up | {m['after_warmup']:.0f} MiB | |",
             f"| replica memory at its peak | {m['peak']:.0f} MiB | bounded (below) |",
             f"| replica memory once the load stopped | {m['after_load']:.0f} MiB "
             f"({back:+.1f}%) | within 10% of after warm-up |", "",
             "Status codes by kind of request:", "", "| request | codes |", "| --- | --- |"]
    lines += [f"| {k} | {', '.join(f'{c}: {n}' for c, n in v.items())} |"
              for k, v in r["by_kind"].items()]
    lines += ["", "Code 0: the client hung up before any answer, on purpose; the replica keeps "
              "that request's share of the pixel budget until its decode is done."]
    lim = r["limits"]
    lines += ["", f"The bound: a replica decodes at most {lim['pixel_budget']:,} pixels at once "
              f"(requests wait for room), one request at most {lim['max_pixels']:,}; at about "
              f"20 bytes a pixel in the Python predictor that is about "
              f"{lim['pixel_budget'] * 20 / 2**20:,.0f} MiB above the idle replica, however "
              f"many clients; bodies are refused as they pass 64 MiB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve_load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--photo", type=Path, help="a photo to send (default: the first held-out "
                                             "one next to the artifacts, demo/car.jpg)")
    p.add_argument("--requests", type=int, default=1000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--commit", action="store_true", help="write benchmarks/results/<device>/")
    args = p.parse_args(argv)
    photo = args.photo or args.artifacts.parent / "car.jpg"
    r = run(args.artifacts, photo, args.requests, args.clients)
    info = M.device_info(__import__("torch").device("cpu"))
    command = "python -m benchmarks.serve_load " + " ".join(argv or sys.argv[1:])
    write_page(page_folder(info["slug"], args.commit), "serve_load", r,
               markdown(r, info["name"], command))
    return 0 if r["server_errors"] == 0 and r["healthz_max_s"] <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
