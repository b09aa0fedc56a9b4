"""The page on the REST port: its files and endpoints over real HTTP, and the page itself in a real Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from psyattr.export import export_model
from psyattr.faces import get_framing
from psyattr.lrp.heatmap import render
from psyattr.serving import ExplainerClient, ModelServer
from psyattr.studies.report import find_chromium
from tests.serving_models import assert_heatmaps_close, framed_inputs, random_regressor
from tests.test_lrp_explainer import random_net

REGRESSOR, GENDER = "psyattr_regressor", "psyattr_gender"


@pytest.fixture(scope="module")
def server(face_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("saved_models")
    export_model(random_regressor(51, face_images), root, REGRESSOR)
    export_model(random_net("gender", 52, False), root, GENDER)
    # XLA stays enabled in the test process: disabling it cannot be undone.
    with ModelServer(root, port=0, rest_port=0, xla_cpu_compilation_enabled=True) as server:
        yield server


def fetch(server, path: str, body: bytes | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(server.rest_address + path, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_page_and_its_endpoints_are_served_from_the_package(server, omi_dir):
    status, kind, body = fetch(server, "/")
    assert status == 200 and kind.startswith("text/html") and b'<script src="/page/page.js">' in body
    for path, expected in (("/page/page.js", "text/javascript"), ("/page/page.css", "text/css")):
        status, kind, body = fetch(server, path)
        assert status == 200 and kind.startswith(expected) and len(body) > 500
    assert b"http://" not in fetch(server, "/")[2] + fetch(server, "/page/page.js")[2]  # nothing from elsewhere

    status, _, body = fetch(server, "/psyattr/models")
    models = {m["name"]: m for m in json.loads(body)["models"]}
    assert status == 200 and set(models) == {REGRESSOR, GENDER}
    assert models[REGRESSOR]["outputs"] == ["happy", "attractive"] and models[REGRESSOR]["kind"] == "regressor"
    assert models[GENDER]["framing"] == "utkface" and models[GENDER]["photos"]

    photo = (omi_dir / "images_256" / "1.jpg").read_bytes()
    status, _, body = fetch(server, f"/psyattr/frame?model={GENDER}", photo)
    framed = json.loads(body)
    assert status == 200 and framed["framing"] == "utkface" and framed["size"] == 256
    frame = np.asarray(Image.open(io.BytesIO(base64.b64decode(framed["framed"]))))
    assert frame.shape == (256, 256, 3)
    expected = framed_inputs([omi_dir / "images_256" / "1.jpg"], get_framing("utkface").to_json())[0]
    np.testing.assert_array_equal(frame[14:241, 14:241].astype(np.float32), expected)


@pytest.mark.parametrize("case", ["no face", "no image", "empty", "no model", "unknown model"])
def test_photos_the_page_cannot_frame_are_refused_with_the_reason(server, case):
    path, body, status, message = {
        "no face": (f"/psyattr/frame?model={GENDER}", png(Image.new("RGB", (200, 200), (128, 128, 128))), 400,
                    "no face found in the photo"),
        "no image": (f"/psyattr/frame?model={GENDER}", b"GIF89a, or so it says", 400, "cannot decode image the photo"),
        "empty": (f"/psyattr/frame?model={GENDER}", b"", 400, "The body is empty"),
        "no model": ("/psyattr/frame", b"x", 400, "Missing model"),
        "unknown model": ("/psyattr/frame?model=nope", b"x", 404, "Servable not found for request: Latest(nope)"),
    }[case]
    got, kind, answer = fetch(server, path, body)
    assert got == status and kind.startswith("application/json") and message in json.loads(answer)["error"]
    assert fetch(server, "/psyattr/models")[0] == 200


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        pytest.skip(f"Playwright is not installed ({err}): pip install playwright")
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page is not checked in a browser")
    return sync_playwright, chromium


def test_the_page_explains_an_uploaded_face_with_two_models_as_grpc_does(server, omi_dir, tmp_path):
    sync_playwright, chromium = _playwright()
    photo = omi_dir / "images_256" / "1.jpg"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(server.rest_address + "/")
            page.wait_for_function("window.psyattr.ready", timeout=60_000)
            page.select_option("#model-a", REGRESSOR)
            page.select_option("#target-a", "attractive")
            page.select_option("#model-b", GENDER)
            page.set_input_files("#photo", str(photo))
            page.wait_for_function("Object.keys(window.psyattr.results).length === 2", timeout=120_000)
            results = page.evaluate("window.psyattr.results")
            scale = page.evaluate("window.psyattr.scale")
            shown = page.eval_on_selector_all("#scores-a td.value", "cells => cells.map(c => [c.dataset.key, "
                                                                   "Number(c.dataset.value), c.textContent])")
            heat_pixels = page.evaluate("Array.from(document.getElementById('heatmap-a').getContext('2d')"
                                        ".getImageData(0, 0, 227, 227).data)")
            screenshot = tmp_path / "page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert page.is_visible("#framed-a") and page.is_visible("#framed-b")
            assert errors == []
        finally:
            browser.close()

    for column, name, target in (("a", REGRESSOR, "attractive"), ("b", GENDER, None)):
        with ExplainerClient(server.address, name, timeout=120) as client:
            images = framed_inputs([photo], client.framing)
            expected = client.explain(images, target)
        result = results[column]
        assert result["model"] == name and result["target"] == expected.target_names[0]
        assert result["target_score"] == pytest.approx(float(expected.scores[0]), rel=1e-5, abs=1e-6)
        for key, values in expected.outputs.items():
            assert result["outputs"][key] == pytest.approx(float(values[0]), rel=1e-5, abs=1e-6), key
        assert_heatmaps_close(np.asarray(result["heatmap"], np.float32)[None], expected.heatmap)
    # The ratings shown are the served ones, on the attribute's scale.
    assert [key for key, _, _ in shown] == ["rating_happy", "rating_attractive"]
    for key, value, text in shown:
        assert value == pytest.approx(results["a"]["outputs"][key], rel=1e-6)
        assert re.fullmatch(rf"{value:.2f} on \d+–\d+", text), text
    # One colour scale for both heatmaps: the 99.5th percentile of |relevance| over both, as psyattr's figures.
    both = np.abs(np.concatenate([np.ravel(results[c]["heatmap"]) for c in "ab"]))
    assert scale == pytest.approx(float(np.percentile(both, 99.5)), rel=1e-6)
    # The heatmap drawn is psyattr's own rendering (red-blue, white at zero) on that scale.
    pixels = np.asarray(heat_pixels, np.uint8).reshape(227, 227, 4)[..., :3].astype(int)
    drawn = render(np.asarray(results["a"]["heatmap"], np.float32), scale).astype(int)
    assert np.abs(pixels - drawn).max() <= 3 and np.ptp(drawn) > 0
    assert Image.open(screenshot).size[0] >= 1000
    keep = os.environ.get("PSYATTR_SCREENSHOTS")
    if keep:
        shutil.copy(screenshot, os.path.join(keep, "page.png"))


def test_the_client_frames_photo_files_and_sends_them_as_photos(server, omi_dir, tmp_path):
    from psyattr.faces import FramingError

    photos = [omi_dir / "images_256" / name for name in ("1.jpg", "2.jpg")]
    with ExplainerClient(server.rest_address, REGRESSOR, timeout=120) as client:
        by_pixels = client.explain(framed_inputs(photos, client.framing), "happy")
        by_photo = client.explain_photos([photos[0], photos[1].read_bytes()], "happy")
        assert by_photo.target_names == by_pixels.target_names == ["happy", "happy"]
        np.testing.assert_allclose(by_photo.scores, by_pixels.scores, rtol=1e-5)
        assert_heatmaps_close(by_photo.heatmap, by_pixels.heatmap)
        predicted = client.predict_photos(photos)
        for key, values in client.predict(framed_inputs(photos, client.framing)).items():
            np.testing.assert_allclose(predicted[key], values, rtol=1e-5)
        Image.new("RGB", (200, 200), (128, 128, 128)).save(tmp_path / "wall.png")
        with pytest.raises(FramingError, match=r"no face found in .*wall.png"):
            client.explain_photos([photos[0], tmp_path / "wall.png"])
