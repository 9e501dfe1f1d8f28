"""Ray Serve: correct masks, dynamic batching, bad input codes, surviving a killed replica.

Everything on loopback with a local Ray of 2 CPUs; every loop is bounded in count and time.
"""

from __future__ import annotations

import io
import json
import struct
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from helpers import config_refine_spec
from PIL import Image

ray = pytest.importorskip("ray", reason="the `scale` extra (ray[serve]) is not installed")
serve = pytest.importorskip("ray.serve", reason="ray[serve] is not installed")

def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


PORT = _free_port()
URL = f"http://127.0.0.1:{PORT}"


def _post(path: str, body: bytes, ctype: str | None = "image/jpeg", timeout: float = 30.0
          ) -> tuple[int, bytes]:
    """POST `body`; ctype None sends urllib's default, as curl --data-binary does: the form
    type application/x-www-form-urlencoded."""
    headers = {} if ctype is None else {"Content-Type": ctype}
    req = urllib.request.Request(URL + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _get(path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(URL + path, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _png_mask(data: bytes) -> np.ndarray:
    return (np.asarray(Image.open(io.BytesIO(data))) > 127).astype(np.uint8)


@pytest.fixture(scope="module")
def server(tiny_artifacts: Path):
    from carseg.apps.serve import build_app

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    app = build_app(tiny_artifacts, backend="torchscript", replicas=2, max_batch=8,
                    batch_wait_ms=50)
    serve.run(app, name="carseg", route_prefix="/")
    deadline = time.monotonic() + 120
    healthy = False
    while time.monotonic() < deadline and not healthy:
        try:
            healthy = _get("/healthz")[0] == 200
        except OSError:
            time.sleep(0.5)
    assert healthy, "the Serve app did not answer /healthz within 120 s"
    yield tiny_artifacts
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def photos(tiny_data: Path) -> list[tuple[bytes, np.ndarray]]:
    """(JPEG bytes, the reference predictor's mask) for a few held-out photos."""
    from carseg.datasets.prepare import read_csv
    from carseg.io.images import read_rgb

    out = []
    for image, _ in read_csv(tiny_data / "dataset_valid.csv")[:4]:
        out.append((image.read_bytes(), None, read_rgb(image)))
    return out


def _reference(server: Path, photos) -> list[np.ndarray]:
    from carseg.runtime.reference import ReferencePredictor

    ref = ReferencePredictor(server)
    return [np.asarray(ref.predict(rgb)) for _, _, rgb in photos]


def test_served_mask_equals_reference(server: Path, photos) -> None:
    expected = _reference(server, photos)
    for (body, _, rgb), want in zip(photos, expected, strict=True):
        status, data = _post("/v1/segment", body)
        assert status == 200
        got = _png_mask(data)
        assert got.shape == rgb.shape[:2]
        assert np.array_equal(got, want)
    status, data = _post("/v1/segment?output=cutout&background=transparent", photos[0][0])
    assert status == 200
    rgba = np.asarray(Image.open(io.BytesIO(data)))
    assert rgba.shape == (*photos[0][2].shape[:2], 4)
    assert np.array_equal((rgba[..., 3] > 127).astype(np.uint8), expected[0])
    status, data = _get("/v1/model")
    assert status == 200 and json.loads(data)["schema_version"] == 1


@pytest.mark.parametrize("ctype", [None, "", "application/octet-stream"])
def test_a_photo_without_an_image_content_type_is_read_by_its_bytes(server: Path, photos,
                                                                      ctype) -> None:
    status, data = _post("/v1/segment", photos[1][0], ctype)
    assert status == 200, data
    assert np.array_equal(_png_mask(data), _reference(server, photos[1:2])[0])


def test_concurrent_clients_are_batched_and_correct(server: Path, photos) -> None:
    expected = _reference(server, photos)
    jobs = [i % len(photos) for i in range(48)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: (i, _post("/v1/segment", photos[i][0])), jobs))
    for i, (status, data) in results:
        assert status == 200 and np.array_equal(_png_mask(data), expected[i])
    seen: dict[str, int] = {}
    for _ in range(20):  # stats are per replica: ask until both have answered
        stats = json.loads(_get("/v1/stats")[1])
        for k, v in stats["batch_sizes"].items():
            seen[k] = max(seen.get(k, 0), v)
    assert max(int(k) for k in seen) > 1, seen


def _huge_bmp() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="BMP")
    data = bytearray(buf.getvalue())
    data[18:26] = struct.pack("<ii", 20000, 20000)  # 400 M pixels declared in the header
    return bytes(data)


@pytest.mark.parametrize("body, ctype, code, message", [
    (b"hello", "text/plain", 415, "content type text/plain is not an image"),
    (b"hello", "", 415, "the body is not a JPEG, PNG, GIF or BMP image"),
    (b"hello", "application/x-www-form-urlencoded", 415, "content type application/x-www"),
    (b"hello, not a photo", "image/jpeg", 400, "not a readable image"),
    (b"", "image/png", 400, "empty file"),
    (None, "image/bmp", 413, "image too large"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image/jpeg", 400, "corrupt or truncated"),
])
def test_bad_input_gets_its_code_and_server_survives(server: Path, photos, body, ctype, code,
                                                     message) -> None:
    status, data = _post("/v1/segment", _huge_bmp() if body is None else body, ctype)
    assert status == code and message in data.decode(), data
    assert _post("/v1/segment", photos[0][0])[0] == 200
    assert _get("/healthz")[0] == 200


def test_oversized_body_is_refused_before_it_is_read(server: Path) -> None:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.putrequest("POST", "/v1/segment")
    conn.putheader("Content-Type", "image/jpeg")
    conn.putheader("Content-Length", str(1 << 30))  # announces 1 GiB, sends 1 KiB
    conn.endheaders()
    conn.send(b"\xff" * 1024)
    r = conn.getresponse()
    assert r.status == 413 and b"byte limit" in r.read()
    conn.close()
    assert _get("/healthz")[0] == 200


def test_a_folder_the_replicas_cannot_load_is_refused_up_front(tiny_artifacts: Path,
                                                               tmp_path: Path) -> None:
    import shutil

    from carseg.apps.serve import build_app
    from carseg.errors import CarsegError

    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    with (art / "model.torchscript.pt").open("ab") as f:
        f.write(b"x")
    with pytest.raises(CarsegError, match="model.torchscript.pt: sha256 mismatch"):
        build_app(art)
    with pytest.raises(ValueError, match="no 'aoti' artifact"):
        build_app(tiny_artifacts, backend="aoti")


def test_the_trial_load_says_what_the_replicas_run(tiny_artifacts: Path) -> None:
    from carseg.apps.serve import check_artifacts

    radius = config_refine_spec().radius  # what export recorded from the config
    assert check_artifacts(tiny_artifacts, "onnx", "onnx") == (
        f"onnx fp32 on cpu, refinement on (radius {radius:.1f} model px)")


def test_routes_and_query_errors(server: Path, photos) -> None:
    assert _get("/v1/nope")[0] == 404
    assert _get("/v1/segment")[0] == 405
    status, data = _post("/v1/segment?output=poster", photos[0][0])
    assert status == 400 and b"output" in data


def test_killing_a_replica_loses_no_retried_request(server: Path, photos) -> None:
    expected = _reference(server, photos)
    replicas = [a for a in ray.util.list_named_actors(all_namespaces=True)
                if "SERVE_REPLICA" in a["name"] and "carseg" in a["name"]]
    assert len(replicas) == 2

    def client(i: int) -> bool:
        for attempt in range(20):  # bounded retries with back-off
            try:
                status, data = _post("/v1/segment", photos[i % len(photos)][0], timeout=20)
            except OSError:
                status, data = 0, b""
            if status == 200:
                return np.array_equal(_png_mask(data), expected[i % len(photos)])
            time.sleep(0.2 * (attempt + 1))
        return False

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client, i) for i in range(40)]
        time.sleep(0.3)
        victim = ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"])
        ray.kill(victim, no_restart=True)
        assert all(f.result(timeout=300) for f in futures)
    deadline = time.monotonic() + 120  # Serve brings the replica count back
    alive: list = []
    while time.monotonic() < deadline:
        alive = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if "SERVE_REPLICA" in a["name"] and "carseg" in a["name"]]
        if len(alive) == 2 and replicas[0]["name"] not in alive:
            break
        time.sleep(1)
    assert len(alive) == 2 and replicas[0]["name"] not in alive, alive
    assert _post("/v1/segment", photos[0][0])[0] == 200


# ---- cutouts, the alpha matte and the options over HTTP -------------------------------------

def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA" if data[:4] == b"\x89PNG"
                                                          else "RGB"))


def test_cutouts_mattes_and_options_equal_the_reference(server: Path, photos) -> None:
    """Each output of /v1/segment is the reference predictor's render() of the photo: the
    alpha matte and a transparent cutout exactly (PNG), a colour cutout within JPEG's error,
    a crop the car's box, refine=0 the unrefined mask."""
    from carseg.io.encode import crop_box
    from carseg.runtime.reference import ReferencePredictor

    ref = ReferencePredictor(server)
    body, _, rgb = photos[0]
    want = ref.render(rgb, "transparent")
    status, data = _post("/v1/segment?output=alpha", body)
    assert status == 200 and np.array_equal(np.asarray(Image.open(io.BytesIO(data))),
                                            want["alpha"])
    status, data = _post("/v1/segment?output=cutout&background=transparent", body)
    assert status == 200 and np.array_equal(_rgb(data), want["cutout"])
    status, data = _post("/v1/segment?output=cutout&background=%2300ff00&quality=100", body)
    assert status == 200
    got, colour = _rgb(data).astype(int), ref.render(rgb, "#00ff00")["cutout"].astype(int)
    assert np.abs(got - colour).mean() < 2
    status, data = _post("/v1/segment?output=cutout&crop=5", body)
    x0, y0, x1, y1 = crop_box(want["alpha"], 5)
    assert status == 200 and _rgb(data).shape == (y1 - y0, x1 - x0, 3)
    status, data = _post("/v1/segment?refine=0", body)
    unrefined = ReferencePredictor(server, refine=False).predict(rgb)
    assert status == 200 and (_png_mask(data) != unrefined).mean() <= 1e-3


@pytest.mark.parametrize("query, field", [
    ("output=alpha&background=/etc/passwd", "background: expected white, transparent or #RRGGBB"),
    ("output=cutout&background=%23abc", "#RRGGBB"),
    ("crop=-1", "crop: expected an integer"),
    ("quality=0", "quality: expected an integer in [1, 100]"),
    ("refine=yes", "refine: expected 0 or 1"),
    ("colour=red", "unknown query parameter 'colour'"),
])
def test_bad_options_are_400_and_name_the_parameter(server: Path, photos, query: str,
                                                    field: str) -> None:
    status, data = _post(f"/v1/segment?{query}", photos[0][0])
    assert status == 400 and field in data.decode(), data


def test_the_page_and_the_openapi_description(server: Path) -> None:
    status, page = _get("/")
    assert status == 200 and b"<title>carseg" in page and b"/v1/segment" in page
    status, data = _get("/openapi.json")
    api = json.loads(data)
    assert status == 200 and api["openapi"].startswith("3.")
    params = {p["name"] for p in api["paths"]["/v1/segment"]["post"]["parameters"]}
    assert params == {"output", "background", "crop", "quality", "refine"}


# ---- the web page in a real browser ----------------------------------------------------------

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")

READ_PIXELS = """
const img = document.querySelector('img.cutout');
if (!img || !img.complete || img.naturalWidth === 0) return null;
const c = document.createElement('canvas');
c.width = img.naturalWidth; c.height = img.naturalHeight;
const ctx = c.getContext('2d');
ctx.drawImage(img, 0, 0);
return {w: c.width, h: c.height, data: Array.from(ctx.getImageData(0, 0, c.width, c.height).data)};
"""


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make setup "
                    "installs them)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1100,900", "--force-color-profile=srgb"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


def test_the_page_cuts_out_a_dropped_photo_in_a_real_browser(server: Path, photos, browser,
                                                             tmp_path: Path) -> None:
    """Open /, choose a colour background, pick a photo, wait for its cutout, and read the
    cutout's pixels back out of the page: they are the reference's render() of that photo
    (within JPEG's error), the backdrop colour away from where the matte is above 0."""
    import os

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from carseg.runtime.reference import ReferencePredictor

    body, _, rgb = photos[1]
    photo = tmp_path / "car.jpg"
    photo.write_bytes(body)
    browser.get(URL + "/")
    browser.execute_script("document.getElementById('background').value = 'colour';"
                           "document.getElementById('colour').value = '#00ff00';")
    browser.find_element(By.ID, "files").send_keys(str(photo))
    pixels = WebDriverWait(browser, 60, poll_frequency=0.5).until(
        lambda d: d.execute_script(READ_PIXELS))
    got = np.asarray(pixels["data"], dtype=np.uint8).reshape(pixels["h"], pixels["w"], 4)
    assert got.shape[:2] == rgb.shape[:2]
    assert (got[..., 3] == 255).all()
    ref = ReferencePredictor(server)
    want = ref.render(rgb, "#00ff00")
    assert np.abs(got[..., :3].astype(int) - want["cutout"].astype(int)).mean() < 3
    # 8 px or more from any pixel the matte touches (a JPEG block: ringing spreads the edge
    # that far); the tiny model takes most of the photo for car, so there may be none
    import torch
    near = torch.nn.functional.max_pool2d(torch.from_numpy(want["alpha"] > 0).float()[None],
                                          17, stride=1, padding=8)[0].numpy() > 0
    far = ~near
    if far.any():
        assert np.abs(got[..., :3][far].astype(int) - [0, 255, 0]).mean() < 3
    status = browser.find_element(By.CSS_SELECTOR, ".result .status").text
    assert "car.jpg: cut out in" in status and "refined" in status
    link = browser.find_element(By.CSS_SELECTOR, "a.download")
    assert link.get_attribute("download") == "car_cutout.jpg"
    shot = os.environ.get("CARSEG_WEB_SCREENSHOT")  # docs/web.png is made this way
    browser.save_screenshot(shot or str(tmp_path / "page.png"))
