"""TF Serving's REST API (`/v1/models/...`) over the same `ServingCore` as the gRPC services, on aiohttp.

Paths, methods and answers follow TF Serving's HTTP handler: `GET /v1/models/NAME[/versions/V|/labels/L]`
(status), the same with `/metadata`, and `POST /v1/models/NAME[/versions/V|/labels/L]:predict`; every
answer is JSON, errors `{"error": "..."}` with the HTTP status TF Serving gives the gRPC code (and the
code's name in the `X-Grpc-Code` header, which TF Serving does not send). A path or method outside the
API is TF Serving's INVALID_ARGUMENT "Malformed request" (400). Bodies over `max_body_bytes` are refused
with 413 from their Content-Length (or once that many bytes came), before they are read whole.

`GET /` serves a page to try the models in a browser (`psyattr.serving.page`).

The event loop only reads bodies and writes answers: parsing, prediction and rendering run in a thread
pool, so one long explain never stalls the other connections.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import re
import threading
from urllib.parse import unquote

import grpc
from aiohttp import HttpVersion11, web
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, predict_pb2

from psyattr.serving.errors import CODE_HEADER, ServingError, clip, http_status, invalid, not_found
from psyattr.serving.page import frame_upload, models_overview, static_file
from psyattr.serving.rest_json import (SIGNATURE_DEF, parse_predict_request, render_error, render_metadata,
                                       render_predict_response, render_status)

log = logging.getLogger(__name__)

DEFAULT_REST_PORT = 8501  # TF Serving's --rest_api_port in its Docker image
DEFAULT_MAX_BODY_BYTES = 64 << 20  # about 50 images as JSON numbers
DEFAULT_REST_TIMEOUT = 30.0  # TF Serving's --rest_api_timeout_in_ms default
# TF Serving's path patterns (model_servers/http_rest_api_util.cc), matched case-insensitively like RE2's (?i).
_PREDICT = re.compile(r"/v1/models/([^/:]+)(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
                      re.IGNORECASE | re.DOTALL)
_STATUS = re.compile(r"/v1/models(?:/([^/:]+))?(?:(?:/versions/([0-9]+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
                     re.IGNORECASE | re.DOTALL)
_API = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
_INT64_MAX = 2 ** 63 - 1


def _model_spec(name: str | None, version: str | None, label: str | None) -> model_pb2.ModelSpec:
    spec = model_pb2.ModelSpec(name=unquote(name or ""))
    if version:
        if int(version) > _INT64_MAX:
            raise invalid(f"Failed to convert version: {clip(version)} to numeric.")
        spec.version.value = int(version)
    if label:
        spec.version_label = unquote(label)
    return spec


class RestApi:
    """One REST request (method, raw path, body) to its gRPC code and JSON answer, through `core`; blocking."""

    def __init__(self, core, timeout: float = DEFAULT_REST_TIMEOUT):
        self.core = core
        self.timeout = timeout

    def answer(self, method: str, path: str, body: bytes) -> tuple[grpc.StatusCode, bytes]:
        """The gRPC code and the JSON body of the answer (never raises)."""
        try:
            payload, code = self._dispatch(method, path, body), grpc.StatusCode.OK
        except ServingError as err:
            payload, code = render_error(err.message), err.code
        except Exception as err:  # a bug must cost one request, never the server
            log.exception("REST request failed")
            payload, code = render_error(f"internal error: {type(err).__name__}: {err}"), grpc.StatusCode.INTERNAL
        self.core.count(code)
        return code, payload

    def _dispatch(self, method: str, path: str, body: bytes) -> bytes:
        route, _, query = path.partition("?")
        if method == "GET" and route == "/psyattr/models":
            return models_overview(self.core)
        if method == "POST" and route == "/psyattr/frame":
            return frame_upload(self.core, query, body)
        path = route  # TF Serving matches the path alone, whatever query follows it
        if not _API.fullmatch(path):
            raise not_found(f"Not found: {clip(path)} (the REST API is under /v1/models/; the page is at /)")
        if method == "POST" and (match := _PREDICT.fullmatch(path)):
            name, version, label, verb = match.groups()
            spec = _model_spec(name, version, label)
            if verb == "predict":
                return self._predict(spec, body)
            if verb in ("classify", "regress"):
                raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{verb} is not served here: psyattr models answer :predict")
        elif method == "GET" and (match := _STATUS.fullmatch(path)):
            name, version, label, subresource = match.groups()
            if not name:
                raise invalid("Missing model name in request.")
            spec = _model_spec(name, version, label)
            if subresource == "metadata":  # TF Serving compares it case-sensitively, after a case-blind match
                request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec=spec, metadata_field=[SIGNATURE_DEF])
                return render_metadata(self.core.metadata(request))
            return render_status(self.core.model_status(get_model_status_pb2.GetModelStatusRequest(model_spec=spec)))
        raise invalid(f"Malformed request: {method} {clip(path)}")

    def _predict(self, spec: model_pb2.ModelSpec, body: bytes) -> bytes:
        request = predict_pb2.PredictRequest(model_spec=spec)
        form = parse_predict_request(body, request, lambda signature: self.core.signature_inputs(spec, signature))
        return render_predict_response(self.core.predict(request, self.timeout), form)


def _reply(code: grpc.StatusCode, payload: bytes) -> web.Response:
    return web.Response(body=payload, status=http_status(code), content_type="application/json",
                        headers={CODE_HEADER: code.name})


class RestServer:
    """TF Serving's REST API for `core` on `http://host:port` (`port=0` picks a free one), in a thread of its own."""

    def __init__(self, core, host: str = "127.0.0.1", port: int = DEFAULT_REST_PORT,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, timeout: float = DEFAULT_REST_TIMEOUT,
                 max_workers: int = 32):
        self.api = RestApi(core, timeout)
        self.core = core
        self.host = host
        self.port = port
        self.max_body_bytes = max_body_bytes
        self.max_workers = max_workers
        self.max_in_flight = max_workers * 4  # as the gRPC server's maximum_concurrent_rpcs
        self._in_flight = 0
        self._grace = 30.0
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    @property
    def address(self) -> str:
        """`http://host:port` to give clients."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> RestServer:
        """Bind the port and start answering; returns self (OSError if the port cannot be had)."""
        self._pool = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="rest")
        ready: concurrent.futures.Future = concurrent.futures.Future()
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(ready),), name="rest-server", daemon=True)
        self._thread.start()
        try:
            self.port = ready.result()
        except OSError as err:
            self._thread.join()
            self._pool.shutdown()
            self._thread = None
            raise OSError(f"cannot listen on {self.host}:{self.port} for REST: {err.strerror or err} (pick another "
                          "--rest-port, --rest-port 0 for a free one, or --no-rest)") from err
        log.info("REST API on %s", self.address)
        return self

    async def _serve(self, ready: concurrent.futures.Future) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle, expect_handler=self._expect)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, reuse_port=False)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            ready.set_exception(err)
            return
        ready.set_result(site.port)
        await self._stopping.wait()
        await site.stop()  # no new connections; requests in flight get the grace period
        deadline = self._loop.time() + self._grace
        while self._in_flight and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        await runner.cleanup()

    def _refusal(self, content_length: int | None) -> web.Response | None:
        return self._too_large(content_length) if content_length is not None and content_length > self.max_body_bytes \
            else None

    def _too_large(self, size: int | None) -> web.Response:
        said = f"of {size} bytes " if size is not None else ""
        message = (f"Request body {said}is larger than the limit of {self.max_body_bytes} bytes "
                   f"({self.max_body_bytes / (1 << 20):g} MiB): send fewer images per request, or start the server "
                   "with a larger --rest-max-body-mb")
        self.core.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
        response = _reply(grpc.StatusCode.RESOURCE_EXHAUSTED, render_error(message))
        response.set_status(413)
        return response

    async def _expect(self, request: web.Request) -> web.Response | None:
        # Refusing here spares a client that waits for "100 Continue" (curl, for large bodies) from sending it.
        refusal = self._refusal(request.content_length)
        if refusal is not None:
            return refusal
        if request.version == HttpVersion11 and request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return None

    async def _handle(self, request: web.Request) -> web.Response:
        if self._in_flight >= self.max_in_flight:
            self.core.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
            return _reply(grpc.StatusCode.RESOURCE_EXHAUSTED, render_error(
                f"Too many concurrent requests (limit {self.max_in_flight}): retry later"))
        if request.method in ("GET", "HEAD") and (page := static_file(request.rel_url.path)) is not None:
            return web.Response(body=page[0], content_type=page[1].split(";")[0], charset="utf-8",
                                headers={"Cache-Control": "no-cache"})
        self._in_flight += 1
        try:
            refusal = self._refusal(request.content_length)
            if refusal is not None:
                return refusal
            body = bytearray()
            async for chunk in request.content.iter_any():
                body.extend(chunk)
                if len(body) > self.max_body_bytes:
                    return self._too_large(None)
            code, payload = await self._loop.run_in_executor(self._pool, self.api.answer, request.method,
                                                             request.rel_url.raw_path_qs, body)
            return _reply(code, payload)
        finally:
            self._in_flight -= 1

    def stop(self, grace: float = 30.0) -> None:
        """Stop taking connections, let requests in flight finish (up to `grace` seconds), then close."""
        if self._thread is None:
            return
        self._grace = grace
        self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join()
        self._pool.shutdown(wait=True)
        self._thread = None
