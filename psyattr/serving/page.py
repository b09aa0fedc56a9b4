"""The page on the REST port (`GET /`): try a served model on a photo, in a browser, with nothing to install.

The page itself is static (`psyattr/serving/page/`: HTML, CSS and a script, no build step and nothing from
a CDN). Its script asks two small JSON endpoints beside TF Serving's API, then the API itself:

- `GET /psyattr/models`: the loaded models with what the page shows (outputs, rating scales, framing).
- `POST /psyattr/frame?model=NAME`: the photo file as the body; the answer is the face framed as that
  model expects (by the shipped detector, server side), as a PNG in base64, with the framing's notes.
- `POST /v1/models/NAME:predict` with `explain_image` and the framed PNG: the scores and the heatmap.
"""

from __future__ import annotations

import base64
import json
from importlib import resources
from urllib.parse import parse_qs

from tensorflow_serving.apis import model_pb2

from psyattr.serving.errors import ServingError, clip, invalid, not_found

# Static files by URL path, with their content types.
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/index.html": ("index.html", "text/html; charset=utf-8"),
          "/page/page.js": ("page.js", "text/javascript; charset=utf-8"),
          "/page/page.css": ("page.css", "text/css; charset=utf-8")}
MAX_PHOTO_BYTES = 20 << 20


def static_file(path: str) -> tuple[bytes, str] | None:
    """The bytes and content type of one of the page's files, or None if `path` is none of them."""
    entry = STATIC.get(path)
    if entry is None:
        return None
    return resources.files("psyattr.serving").joinpath("page", entry[0]).read_bytes(), entry[1]


def models_overview(core) -> bytes:
    """`GET /psyattr/models`: per loaded model, its latest version's outputs, scales, kind and framing."""
    models = []
    for name in core.manager.model_names():
        try:
            servable = core.manager.servable(model_pb2.ModelSpec(name=name))
        except ServingError:  # not loaded (yet): the page lists what can answer now
            continue
        meta = servable.metadata or {}
        models.append({"name": name, "version": servable.version, "kind": meta.get("kind"),
                       "outputs": meta.get("outputs") or servable.output_names, "scales": meta.get("scales", {}),
                       "output_keys": meta.get("output_keys", {}),
                       "framing": (meta.get("framing") or {}).get("name"),
                       "photos": "explain_image" in servable.signatures})
    return json.dumps({"models": models}).encode()


def frame_upload(core, query: str, body: bytes) -> bytes:
    """`POST /psyattr/frame?model=NAME`: the uploaded photo framed as NAME's export records, as base64 PNG."""
    from psyattr.data.images import ImageError, decode_rgb
    from psyattr.faces.framing import Framing, frame_image

    names = parse_qs(query).get("model")
    if not names:
        raise invalid("Missing model: POST /psyattr/frame?model=NAME with the photo file as the body")
    servable = core.manager.servable(model_pb2.ModelSpec(name=names[0]))
    record = (servable.metadata or {}).get("framing")
    if record is None:
        raise not_found(f"model {clip(names[0])} records no framing: its photos cannot be framed here")
    if not body:
        raise invalid("The body is empty: send the photo file (JPEG, PNG, GIF or BMP) as the body")
    if len(body) > MAX_PHOTO_BYTES:
        raise invalid(f"The photo is {len(body):,} bytes, over the page's limit of {MAX_PHOTO_BYTES:,}: send a smaller "
                      "file")
    try:
        face = frame_image(decode_rgb(bytes(body), name="the photo"), Framing.from_json(record), source="the photo")
    except ImageError as err:  # FramingError included: no face, a tiny face, a face cut off
        raise invalid(str(err)) from None
    return json.dumps({"model": names[0], "framing": face.framing.name, "notes": list(face.notes),
                       "size": face.framing.size, "crop": 227, "framed": base64.b64encode(face.png()).decode()}).encode()
