"""Online serving on Ray Serve: `carseg serve`, or `build_app(...)` for `serve.run`.

HTTP API (described in OpenAPI 3 at GET /openapi.json)
  POST /v1/segment            body: a JPEG/PNG/BMP/GIF photo -> the mask as PNG (0/255)
       ?output=cutout         -> the cutout: JPEG over background=white (default) or #RRGGBB,
                                 PNG with the alpha matte for background=transparent
       ?output=alpha          -> the alpha matte as a grey PNG (0..255)
       &crop=MARGIN           the cutout cropped to the car grown by MARGIN pixels
       &refine=0              without the manifest's full-resolution refinement
       &quality=Q             JPEG quality, 1-100 (default 95)
  GET  /                      a web page: drop photos, see and download their cutouts
  GET  /openapi.json          this API
  GET  /v1/model              the artifact folder's manifest.json
  GET  /v1/stats              this replica's batch-size histogram and request counts
  GET  /healthz               "ok" once the replica's predictor is loaded

Requests are batched by Ray Serve (`@serve.batch`) up to `max_batch` within
`batch_wait_ms`. Errors are HTTP errors with a one-line reason: 400 not an image, corrupt or
unsupported; 413 too large; 415 not an image (by its content type, or by its first bytes when
the content type is missing or generic, as curl's --data-binary sends it); 404/405 wrong route
or method.
A bad request never takes a replica down.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from carseg.apps._ray import local_ray, raise_if_stopped, require_ray
from carseg.errors import CarsegError, DataError
from carseg.io.encode import (
    JPEG_QUALITY,
    Backdrop,
    encode_alpha_png,
    encode_image,
    encode_mask_png,
    jpeg_cutout_refusal,
)
from carseg.io.images import ImageTooLarge, decode_rgb, image_header, sniff_format
from carseg.runtime.manifest import load_manifest, model_file
from carseg.runtime.predictor import open_predictor, trial_open

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png", "image/bmp", "image/x-ms-bmp", "image/gif")
# Content types that say nothing of the body (curl --data-binary sends the form type): the
# body's own first bytes decide.
GENERIC_TYPES = ("", "application/octet-stream", "application/x-www-form-urlencoded")
MAX_BODY_BYTES = 64 * 2 ** 20
# Per replica. A photo costs the Python predictors about 20 bytes a pixel at its own
# resolution (the photo, float copies, logits resized back), so pixels in flight bound memory:
# at most MAX_PIXELS in one request, PIXEL_BUDGET across the requests being handled at once
# (one larger than the budget runs alone), and MAX_DECODES decodes at a time.
MAX_PIXELS = 32_000_000
PIXEL_BUDGET = 48_000_000
MAX_DECODES = 2


class PixelBudget:
    """Pixels of the photos a replica holds at once: a request waits for room before it
    decodes. A photo larger than the whole budget is let through when nothing else is held."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used = limit, 0
        self._freed = asyncio.Condition()
        self._large_since_trim = False

    @contextlib.asynccontextmanager
    async def hold(self, n: int) -> AsyncIterator[None]:
        async with self._freed:
            await self._freed.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n
        try:
            yield
        finally:
            async with self._freed:
                self.used -= n
                self._large_since_trim |= n > 4_000_000
                idle = self.used == 0 and self._large_since_trim
                if idle:
                    self._large_since_trim = False
                self._freed.notify_all()
            if idle:  # the last holder out after a large photo, whichever photo it was
                await asyncio.to_thread(give_memory_back)  # off the loop: it can take a while


async def finish(work: Any) -> Any:
    """Await `work` (a coroutine or future) to its end even when the request awaiting it is
    cancelled (a client that hangs up), then raise the cancellation: what the request holds
    (its share of the pixel budget, a decode slot) is let go only once the thread or the batch
    has let go of the photo, so hung-up requests cannot get past the limits."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        if not task.cancelled():
            task.exception()  # retrieved: nobody is left to receive it
        raise asyncio.CancelledError
    return task.result()


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache
def _libc() -> Any:
    """glibc, or None where there is none (the memory tuning below is then skipped)."""
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def map_large_buffers(threshold: int = 1 << 20) -> None:
    """Serve buffers of `threshold` bytes and more (photos, their float copies) from mappings
    of their own, unmapped when freed. glibc otherwise raises this threshold to 32 MiB after
    the first large free, and photo-sized buffers then fragment its heaps: after 1,000 mixed
    requests a replica kept 12% more memory than after warm-up, and 2-3% with this
    (measured by benchmarks/serve_load.py)."""
    if (libc := _libc()) is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, threshold)


def give_memory_back() -> None:
    """Return freed heap to the system (glibc keeps it otherwise): after a large photo the
    replica's memory goes back to what it was."""
    if (libc := _libc()) is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


class Segmenter:
    """The replica: one predictor, batched prediction, HTTP handling. Used through Ray Serve;
    constructible directly in tests of its request handling."""

    def __init__(self, model_dir: str, backend: str = "torchscript", device: str = "cpu",
                 max_batch: int = 8, batch_wait_ms: float = 10.0,
                 max_body_bytes: int = MAX_BODY_BYTES, max_pixels: int = MAX_PIXELS,
                 pixel_budget: int = PIXEL_BUDGET) -> None:
        self.model_dir = Path(model_dir)
        self.manifest = load_manifest(self.model_dir).to_json()
        self.predictor = open_predictor(model_dir, backend=backend, device=device)
        self.max_body_bytes = max_body_bytes
        self.max_pixels = max_pixels
        self.pixels = PixelBudget(pixel_budget)
        self.decodes = asyncio.Semaphore(MAX_DECODES)
        self.batch_sizes: Counter[int] = Counter()
        self.requests: Counter[int] = Counter()
        self._configure_batching(max_batch, batch_wait_ms)

    def _configure_batching(self, max_batch: int, batch_wait_ms: float) -> None:
        batched = getattr(self, "predict_one", None)
        if batched is not None and hasattr(batched, "set_max_batch_size"):
            batched.set_max_batch_size(max_batch)
            batched.set_batch_wait_timeout_s(batch_wait_ms / 1000.0)

    def predict_many(self, images: list[np.ndarray]) -> list[np.ndarray]:
        self.batch_sizes[len(images)] += 1
        return [np.asarray(m, dtype=np.uint8) for m in self.predictor.predict_batch(images)]

    async def predict_many_async(self, images: list[np.ndarray]) -> list[np.ndarray]:
        # On a worker thread: the replica's event loop keeps accepting requests (which join
        # the next batch) and answering health checks while the model runs.
        return await asyncio.to_thread(self.predict_many, images)

    async def predict_one(self, image: np.ndarray) -> np.ndarray:
        # The deployment replaces this with a @serve.batch version: callers still pass one
        # image and get one mask, while Ray Serve groups concurrent calls into one batch.
        return (await self.predict_many_async([image]))[0]

    async def handle(self, method: str, path: str, query: dict[str, str],
                     content_type: str, body: bytes) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request; never raises (but a cancelled
        request, whose client hung up, is counted as 499, nginx's "client closed request")."""
        try:
            status, ctype, payload = await self._handle(method, path, query, content_type, body)
        except asyncio.CancelledError:
            self.requests[499] += 1
            raise
        self.requests[status] += 1
        return status, ctype, payload

    async def _handle(self, method: str, path: str, query: dict[str, str], content_type: str,
                      body: bytes) -> tuple[int, str, bytes]:
        def err(code: int, msg: str) -> tuple[int, str, bytes]:
            return code, "text/plain", (msg + "\n").encode()

        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if method == "GET" and (page := await self.page(path)) is not None:
            return page
        if path == "/v1/model":
            return 200, "application/json", json.dumps(self.manifest).encode()
        if path == "/v1/stats":
            stats = {"batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                     "responses": {str(k): v for k, v in sorted(self.requests.items())}}
            return 200, "application/json", json.dumps(stats).encode()
        if path != "/v1/segment":
            return err(404, f"no route {path}; routes: POST /v1/segment, GET /, "
                            f"GET /openapi.json, GET /v1/model, GET /healthz")
        if method != "POST":
            return err(405, f"{path} takes POST with an image body, got {method}")
        ctype = content_type.split(";")[0].strip().lower()
        if ctype in GENERIC_TYPES and sniff_format(body) is None:
            return err(415, f"the body is not a JPEG, PNG, GIF or BMP image (by its first "
                            f"bytes), and its content type {ctype or '(none)'} says no more")
        if ctype not in IMAGE_TYPES + GENERIC_TYPES:
            return err(415, f"content type {ctype} is not an image; send image/jpeg, "
                            f"image/png, image/gif or image/bmp (or no content type)")
        if len(body) > self.max_body_bytes:
            return err(413, f"body of {len(body)} bytes is over the {self.max_body_bytes} "
                            f"byte limit")
        try:
            opts = request_options(query)
        except ValueError as e:
            return err(400, str(e))
        output, backdrop = opts["output"], opts["backdrop"]
        try:  # a header can be slow to parse too (a PNG of a million chunks): not on the loop
            async with self.decodes:
                w, h = await finish(asyncio.to_thread(image_header, body, "request body"))
        except ImageTooLarge as e:
            return err(413, str(e))
        except DataError as e:
            return err(400, str(e))
        if w * h > self.max_pixels:
            return err(413, f"request body: image too large ({w}x{h}, limit {self.max_pixels} "
                            f"pixels)")
        why = jpeg_cutout_refusal(w, h, "background=transparent")
        if output == "cutout" and not backdrop.transparent and why:
            return err(413, f"request body: the photo {why}")
        # Decoding and encoding run on worker threads, never on the event loop: a slow photo
        # does not stall /healthz or the other requests. A request that is cancelled keeps
        # its share of the budget until its thread is done (finish).
        async with self.pixels.hold(w * h):
            try:
                async with self.decodes:
                    rgb = await finish(asyncio.to_thread(decode_rgb, body, "request body",
                                                         self.max_pixels))
            except ImageTooLarge as e:
                return err(413, str(e))
            except DataError as e:
                return err(400, str(e))
            try:
                if output == "mask" and opts["refine"]:  # batched with the other requests
                    mask = await finish(self.predict_one(rgb))
                    return 200, "image/png", await finish(asyncio.to_thread(encode_mask_png,
                                                                            mask))
                data, ctype = await finish(asyncio.to_thread(self.render, rgb, opts))
            except Exception as e:  # the replica survives a failing request and says why
                log.exception("request failed")
                return err(500, f"prediction failed: {e.__class__.__name__}: {e}")
            return 200, ctype, data

    def render(self, rgb: np.ndarray, opts: dict[str, Any]) -> tuple[bytes, str]:
        """One photo's cutout, alpha matte or unrefined mask, encoded: (bytes, content type)."""
        output = opts["output"]
        r = self.predictor.render(rgb, opts["background"] if output == "cutout" else None,
                                  crop=opts["crop"], refine=opts["refine"])
        if output == "mask":
            return encode_mask_png(r["mask"]), "image/png"
        if output == "alpha":
            return encode_alpha_png(r["alpha"]), "image/png"
        data, suffix = encode_image(r["cutout"], opts["quality"])
        return data, "image/jpeg" if suffix == ".jpg" else "image/png"

    async def page(self, path: str) -> tuple[int, str, bytes] | None:
        if path == "/":
            return 200, "text/html; charset=utf-8", _web_file("index.html")
        if path == "/openapi.json":
            return 200, "application/json", json.dumps(openapi()).encode()
        return None


def request_options(query: dict[str, str]) -> dict[str, Any]:
    """/v1/segment's query, checked: output, background (a colour or transparent: never a
    path, which would name the server's files), crop, quality, refine. ValueError names the
    parameter."""
    known = {"output", "background", "crop", "quality", "refine"}
    unknown = sorted(set(query) - known)
    if unknown:
        raise ValueError(f"unknown query parameter {unknown[0][:40]!r}; known: {sorted(known)}")
    output = query.get("output", "mask")
    if output not in ("mask", "cutout", "alpha"):
        raise ValueError(f"output: expected mask, cutout or alpha, got {output[:40]!r}")
    background = query.get("background", "white")
    if background not in ("white", "transparent") and not background.startswith("#"):
        raise ValueError(f"background: expected white, transparent or #RRGGBB, got "
                         f"{background[:40]!r}")
    backdrop = Backdrop.parse(background)

    def integer(name: str, default: int | None, lo: int, hi: int) -> int | None:
        v = query.get(name)
        if v is None:
            return default
        if not v.isdigit() or not lo <= int(v) <= hi:
            raise ValueError(f"{name}: expected an integer in [{lo}, {hi}], got {v[:40]!r}")
        return int(v)

    refine = query.get("refine", "1")
    if refine not in ("0", "1"):
        raise ValueError(f"refine: expected 0 or 1, got {refine[:40]!r}")
    return {"output": output, "background": background, "backdrop": backdrop,
            "crop": integer("crop", None, 0, 1 << 16),
            "quality": integer("quality", JPEG_QUALITY, 1, 100), "refine": refine == "1"}


@functools.cache
def _web_file(name: str) -> bytes:
    return (Path(__file__).parent / "web" / name).read_bytes()


def openapi() -> dict[str, Any]:
    """The HTTP API in OpenAPI 3.1."""
    from carseg import __version__

    image = {"content": {t: {"schema": {"type": "string", "format": "binary"}}
                         for t in ("image/jpeg", "image/png")}}
    text = {"content": {"text/plain": {"schema": {"type": "string"}}}}

    def param(name: str, schema: dict[str, Any], desc: str) -> dict[str, Any]:
        return {"name": name, "in": "query", "required": False, "schema": schema,
                "description": desc}

    return {
        "openapi": "3.1.0",
        "info": {"title": "carseg serve", "version": __version__,
                 "description": "Car segmentation and background removal."},
        "paths": {
            "/v1/segment": {"post": {
                "summary": "Mask, cutout or alpha matte of one photo, at the photo's size",
                "parameters": [
                    param("output", {"enum": ["mask", "cutout", "alpha"], "default": "mask"},
                          "mask: PNG of 0/255; cutout: the car over the background; alpha: "
                          "the alpha matte as a grey PNG"),
                    param("background", {"type": "string", "default": "white",
                                         "pattern": "^(white|transparent|#[0-9a-fA-F]{6})$"},
                          "cutout: white or #RRGGBB (JPEG), transparent (PNG with alpha)"),
                    param("crop", {"type": "integer", "minimum": 0},
                          "cutout: crop to the car's box grown by this many pixels"),
                    param("quality", {"type": "integer", "minimum": 1, "maximum": 100,
                                      "default": JPEG_QUALITY}, "JPEG quality of a cutout"),
                    param("refine", {"enum": ["0", "1"], "default": "1"},
                          "1: the manifest's full-resolution refinement; 0: the model's mask "
                          "resized"),
                ],
                "requestBody": {"required": True, "content": {
                    t: {"schema": {"type": "string", "format": "binary"}}
                    for t in IMAGE_TYPES + ("application/octet-stream",)}},
                "responses": {"200": {"description": "the image", **image},
                              "400": {"description": "not a readable image, or a bad "
                                                     "parameter", **text},
                              "413": {"description": "body or image too large", **text},
                              "415": {"description": "not an image", **text},
                              "500": {"description": "prediction failed", **text}}}},
            "/v1/model": {"get": {"summary": "the artifact folder's manifest.json",
                                  "responses": {"200": {"description": "manifest.json"}}}},
            "/v1/stats": {"get": {"summary": "batch sizes and responses of this replica",
                                  "responses": {"200": {"description": "counts"}}}},
            "/healthz": {"get": {"summary": "ok once the replica's predictor is loaded",
                                 "responses": {"200": {"description": "ok"}}}},
            "/": {"get": {"summary": "the web page",
                          "responses": {"200": {"description": "HTML"}}}},
        },
    }


def _deployment_class(max_batch: int, batch_wait_ms: float):
    """Segmenter as a Ray Serve deployment whose predict_batch is dynamically batched."""
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    class SegmenterDeployment(Segmenter):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            map_large_buffers()  # this process is the replica's own
            super().__init__(*args, **kwargs)

        @serve.batch(max_batch_size=max_batch, batch_wait_timeout_s=batch_wait_ms / 1000.0)
        async def predict_one(self, images: list[np.ndarray]) -> list[np.ndarray]:
            return await self.predict_many_async(images)

        async def __call__(self, request: Request) -> Response:
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                # refused before the body is read into memory
                return Response(f"body of {declared} bytes is over the {self.max_body_bytes} "
                                f"byte limit\n", status_code=413, media_type="text/plain")
            body = b""
            if request.method == "POST":
                # read as it comes, refused as soon as it passes the limit: a chunked body
                # declares no length
                chunks, size = [], 0
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > self.max_body_bytes:
                        return Response(f"body over the {self.max_body_bytes} byte limit\n",
                                        status_code=413, media_type="text/plain")
                    chunks.append(chunk)
                body = b"".join(chunks)
            status, ctype, payload = await self.handle(
                request.method, request.url.path.rstrip("/") or "/", dict(request.query_params),
                request.headers.get("content-type", ""), body)
            return Response(payload, status_code=status, media_type=ctype)

    SegmenterDeployment.__name__ = "Segmenter"
    return SegmenterDeployment


def check_artifacts(model_dir: Path, artifact: str, backend: str = "torchscript",
                    device: str = "cpu") -> str:
    """Refuse, here and now, a folder the replicas could not load (bad manifest, missing or
    changed model file, a model the backend cannot load) with the real reason, instead of Ray's
    "failed to update the deployments" once every replica has failed: the checks, then one
    trial load in this process, freed at once. Returns what the replicas will run
    (runtime.predictor.describe)."""
    model_file(model_dir, load_manifest(model_dir), artifact)
    what = trial_open(model_dir, backend, device)
    give_memory_back()
    return what


def build_app(model_dir: str | Path, backend: str = "torchscript", device: str = "cpu",
              replicas: int = 1, max_batch: int = 8, batch_wait_ms: float = 10.0,
              gpus_per_replica: float = 0.5) -> Any:
    """The Serve application, for `serve.run(app)` or a Ray cluster's config file."""
    require_ray("Ray Serve")
    from ray import serve

    model_dir = Path(model_dir).resolve()
    what = check_artifacts(model_dir, "torchscript" if backend == "native" else backend, backend,
                           device)
    log.info("carseg serve: each replica runs %s", what)
    if replicas < 1 or max_batch < 1 or batch_wait_ms < 0:
        raise ValueError(f"replicas and max_batch must be >= 1 and batch_wait_ms >= 0, got "
                         f"{replicas}, {max_batch}, {batch_wait_ms}")
    actor_options: dict[str, Any] = {"num_cpus": 1}
    if device.startswith("cuda"):
        actor_options["num_gpus"] = gpus_per_replica
    deployment = serve.deployment(
        _deployment_class(max_batch, batch_wait_ms), name="carseg",
        num_replicas=replicas, ray_actor_options=actor_options,
        max_ongoing_requests=max(4 * max_batch, 16), health_check_period_s=5)
    return deployment.bind(str(model_dir), backend, device, max_batch, batch_wait_ms)


def serve_forever(model_dir: Path, *, host: str, port: int, **kwargs: Any) -> None:
    """`carseg serve`: start a local Ray, run the app, block until Ctrl-C or SIGTERM, shut
    down."""
    require_ray("Ray Serve")
    from ray import serve

    app = build_app(model_dir, **kwargs)
    with local_ray(handle_signals=True, include_dashboard=False,
                   logging_level=logging.WARNING):
        try:
            serve.start(http_options={"host": host, "port": port})
            raise_if_stopped()  # one that Serve's start caught
            try:
                serve.run(app, name="carseg", route_prefix="/")
            except RuntimeError as e:  # a replica failed to start: say why, in one line
                raise CarsegError(f"{model_dir}: the Serve app did not start: "
                                  f"{str(e).strip().splitlines()[-1]}") from None
            log.info("serving %s on http://%s:%d (POST /v1/segment); Ctrl-C stops", model_dir,
                     host, port)
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("shutting down")
        finally:
            serve.shutdown()
