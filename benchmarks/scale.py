"""The scaling-out section: Ray Serve at concurrency 1, 8, 32 against the same model called
in-process, and `carseg batch` images/s with 1 and 2 workers. Loopback only; every load loop
is bounded in requests and time."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.measure import percentile

log = logging.getLogger("benchmarks")


def _stats(lat_ms: list[float], seconds: float) -> dict[str, float]:
    return {"requests": len(lat_ms), "p50_ms": percentile(lat_ms, 50),
            "p99_ms": percentile(lat_ms, 99), "throughput_rps": len(lat_ms) / seconds}


def in_process(artifacts: Path, bodies: list[bytes], n: int) -> dict[str, float]:
    """decode + predict + encode, one request after another, no server."""
    from carseg.io.encode import encode_mask_png
    from carseg.io.images import decode_rgb
    from carseg.runtime.reference import ReferencePredictor

    pred = ReferencePredictor(artifacts)
    lat = []
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        encode_mask_png(pred.predict(decode_rgb(bodies[i % len(bodies)])))
        lat.append((time.perf_counter() - s) * 1000)
    return _stats(lat, time.perf_counter() - t0)


def served(artifacts: Path, bodies: list[bytes], concurrencies: list[int], per_client: int,
           port: int = 8799, replicas: int = 1, max_batch: int = 8) -> list[dict[str, Any]]:
    import ray
    from ray import serve

    from carseg.apps.serve import build_app

    url = f"http://127.0.0.1:{port}/v1/segment"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    rows = []
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(artifacts, replicas=replicas, max_batch=max_batch,
                            batch_wait_ms=5), name="carseg", route_prefix="/")

        def post(i: int) -> float:
            req = urllib.request.Request(url, data=bodies[i % len(bodies)],
                                         headers={"Content-Type": "image/jpeg"}, method="POST")
            s = time.perf_counter()
            with urllib.request.urlopen(req, timeout=120) as r:
                r.read()
                if r.status != 200:
                    raise RuntimeError(f"HTTP {r.status}")
            return (time.perf_counter() - s) * 1000

        for _ in range(4):  # warm-up
            post(0)
        for c in concurrencies:
            n = c * per_client
            t0 = time.perf_counter()
            with ThreadPoolExecutor(c) as pool:
                lat = list(pool.map(post, range(n)))
            row = {"concurrency": c, **_stats(lat, time.perf_counter() - t0)}
            rows.append(row)
            log.info("  serve  concurrency %-3d p50 %7.1f ms  p99 %7.1f ms  %6.1f req/s", c,
                     row["p50_ms"], row["p99_ms"], row["throughput_rps"])
    finally:
        serve.shutdown()
        ray.shutdown()
    return rows


def batch(artifacts: Path, folder: Path, workers_list: list[int]) -> list[dict[str, Any]]:
    from carseg.apps.batch import run_batch

    rows = []
    for workers in workers_list:
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            r = run_batch([folder], artifacts, Path(out), workers=workers, batch_size=4,
                          num_cpus=2)
            wall = time.perf_counter() - t0
        row = {"workers": workers, "images": len(r.done), "failed": len(r.failed),
               "seconds_with_ray_start": wall, "pipeline_seconds": r.seconds,
               "images_per_s": len(r.done) / r.seconds if r.seconds else 0.0}
        rows.append(row)
        log.info("  batch  workers %d: %d images, %.2f img/s (pipeline), %.1f s with Ray start",
                 workers, row["images"], row["images_per_s"], wall)
    return rows


def run(artifacts: Path, photos: list[Path], quick: bool) -> dict[str, Any]:
    try:
        import ray  # noqa: F401
    except ImportError:
        return {"skipped": "the `scale` extra (ray) is not installed"}
    bodies = [p.read_bytes() for p in photos[:8]]
    per_client = 2 if quick else 6
    concurrencies = [1, 8] if quick else [1, 8, 32]
    result: dict[str, Any] = {"photos": len(photos), "photo_size": None}
    n = max(concurrencies) * per_client if not quick else 8
    result["in_process"] = in_process(artifacts, bodies, n)
    log.info("  in-process %d requests: p50 %.1f ms, %.1f req/s", n,
             result["in_process"]["p50_ms"], result["in_process"]["throughput_rps"])
    result["served"] = served(artifacts, bodies, concurrencies, per_client)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        for p in photos[: 8 if quick else 32]:
            shutil.copy(p, folder / p.name)
        result["batch"] = batch(artifacts, folder, [1, 2])
    return result
