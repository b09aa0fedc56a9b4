"""`ExplainerClient`: scores and heatmaps from a served psyattr model, over TF Serving's gRPC or REST API.

Works the same against `tensorflow_model_server` and `psyattr serve`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence

import grpc
import numpy as np

from psyattr.explanation import Explanation, from_signature
from psyattr.models.outputs import TOP, target_indices
from psyattr.serving.errors import ServingError
from psyattr.serving.transports import GrpcTransport, RestTransport, Target

# gRPC clients refuse responses over 4 MiB by default; 16 heatmaps alone are 3.3 MB.
DEFAULT_MAX_MESSAGE_BYTES = 512 << 20
TargetSpec = int | str | Sequence[int | str] | None


def _images(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"images must be float (or uint8) pixel values 0..255, got dtype {array.dtype}")
    if array.ndim == 3:
        raise ValueError(f"images must be a batch (N, 227, 227, 3), got one image {array.shape}: add a batch axis "
                         "(images[None])")
    return np.ascontiguousarray(array, dtype=np.float32)


def _targets(target: TargetSpec, count: int, names: list[str] | None) -> np.ndarray:
    """Targets as the `explain` signature takes them: each a name, an index as text, or "" for the top output."""
    if names:
        # Checked here by the rule the server and the exported graph apply, so that a bad target fails before a call.
        indices = target_indices(names, target, count)
        return np.array([b"" if i == TOP else names[i].encode() for i in indices], dtype=object)
    items = [target] * count if target is None or isinstance(target, (int, str, np.integer)) else list(target)
    if len(items) != count:
        raise ValueError(f"got {len(items)} targets for {count} images: give one target, or one per image")
    return np.array([b"" if t is None else str(int(t) if isinstance(t, np.integer) else t).encode() for t in items],
                    dtype=object)


class ExplainerClient:
    """A client of one served model: `ExplainerClient("127.0.0.1:8500", "psyattr_attractive", timeout=30)`.

    `target` is `host:port` for TF Serving's gRPC API or `http://host:port` for its REST API (same results,
    JSON on the wire: slower and larger for heatmaps). Every call has `timeout` seconds; calls that find
    the server UNAVAILABLE (starting, restarting, overloaded) are retried `retries` times with exponential
    backoff, and no other error is retried. Batches larger than `batch_size` are sent as several requests.
    `version` or `version_label` pins a version; by default the server's latest answers.
    """

    def __init__(self, target: str, model_name: str, timeout: float = 60.0, *, version: int | None = None,
                 version_label: str | None = None, retries: int = 3, backoff: float = 0.25, batch_size: int = 16,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        if version is not None and version_label is not None:
            raise ValueError("give a version or a version_label, not both")
        if timeout <= 0 or batch_size < 1 or retries < 0:
            raise ValueError("timeout and batch_size must be positive and retries not negative")
        self.target = target
        self.model_name = model_name
        self.timeout = timeout
        self.version = version
        self.version_label = version_label
        self.retries = retries
        self.backoff = backoff
        self.batch_size = batch_size
        self._model = Target(model_name, version, version_label)
        self._metadata: dict | None = None
        if target.startswith(("http://", "https://")):
            self._transport = RestTransport(target, timeout)
            self.channel = self.prediction = self.models = None
        else:
            self._transport = GrpcTransport(target, timeout, max_message_bytes)
            self.channel = self._transport.channel
            self.prediction, self.models = self._transport.prediction, self._transport.models

    def _call(self, method, *args):
        for attempt in range(self.retries + 1):
            try:
                return method(self._model, *args)
            except ServingError as err:
                if err.code == grpc.StatusCode.UNAVAILABLE and attempt < self.retries:
                    time.sleep(self.backoff * 2 ** attempt)
                    continue
                hint = {grpc.StatusCode.UNAVAILABLE: " (is the server running? retried "
                                                      f"{attempt} time{'s' if attempt != 1 else ''})",
                        grpc.StatusCode.DEADLINE_EXCEEDED: f" (after {self.timeout:g} s: give a longer timeout)"}
                raise ServingError(err.code, f"{self.model_name} at {self.target}: {err.message}"
                                   f"{hint.get(err.code, '')}") from None

    def _batched(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        count = len(next(iter(inputs.values())))
        parts = [self._call(self._transport.predict, signature, {k: v[i:i + self.batch_size] for k, v in inputs.items()})
                 for i in range(0, max(count, 1), self.batch_size)]  # an empty batch goes too: the server says why
        return {key: np.concatenate([p[key] for p in parts]) for key in sorted(parts[0])}

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """`serving_default`: every named output (`score_happy`, `rating_happy`, `prob_female`, ...), each `(N,)`.

        In the model's own output order where the export records it, else by name.
        """
        outputs = self._batched("serving_default", {"image": _images(images)})
        order = [k for keys in (self.export_metadata() or {}).get("output_keys", {}).values() for k in keys]
        return {key: outputs[key] for key in [*[k for k in order if k in outputs], *[k for k in outputs if k not in order]]}

    def explain(self, images: np.ndarray, target: TargetSpec = None, xla: bool = False) -> Explanation:
        """Explain `target` per image (a name, an index, or None for the top output): scores and heatmaps.

        `outputs` of the result are keyed by the signature's output keys (`score_happy`, `prob_female`, ...).
        `xla=True` asks for `explain_xla`, which only servers started with XLA enabled can run.
        """
        images = _images(images)
        targets = self._checked_targets(target, len(images))
        outputs = self._batched("explain_xla" if xla else "explain", {"image": images, "target": targets})
        return self._explanation(outputs, self._output_names())

    def _checked_targets(self, target: TargetSpec, count: int) -> np.ndarray:
        names = self._output_names()
        try:
            return _targets(target, count, names)
        except ValueError as err:
            if not names:
                raise
            # The server would refuse it with this status: the same answer, without sending the images.
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, f"{self.model_name} at {self.target}: {err}") from None

    @staticmethod
    def _explanation(outputs: dict[str, np.ndarray], names: list[str] | None) -> Explanation:
        return from_signature(outputs, names)

    def predict_photos(self, photos: Sequence[str | os.PathLike | bytes], framing: str | None = "model"
                       ) -> dict[str, np.ndarray]:
        """`predict_image` on photo files (or their bytes), each framed first as the export records (`framing`)."""
        return self._batched("predict_image", {"photo": self._framed_photos(photos, framing)})

    def explain_photos(self, photos: Sequence[str | os.PathLike | bytes], target: TargetSpec = None,
                       framing: str | None = "model") -> Explanation:
        """`explain_image` on photo files (or their bytes), each framed first as the export records (`framing`).

        `framing` "model" takes the export's framing; None sends photos that are framed already.
        The heatmaps lie over the framed faces' model inputs (the centre 227 px of the frame).
        """
        encoded = self._framed_photos(photos, framing)
        names = self._output_names()
        outputs = self._batched("explain_image", {"photo": encoded, "target": self._checked_targets(target,
                                                                                                    len(encoded))})
        return self._explanation(outputs, names)

    def _framed_photos(self, photos, framing) -> np.ndarray:
        from psyattr.data.images import decode_rgb
        from psyattr.faces.framing import frame_image, resolve_framing

        chosen = resolve_framing(framing, self.framing, f"served model {self.model_name} at {self.target}")
        encoded = []
        for i, photo in enumerate(photos):
            name = f"photo {i}" if isinstance(photo, (bytes, bytearray)) else str(photo)
            encoded.append(frame_image(decode_rgb(photo, name=name), chosen, source=name).png())
        return np.array(encoded, dtype=object)

    def __call__(self, images: np.ndarray, target: TargetSpec = None) -> Explanation:
        """`explain` as every attribution method is called."""
        return self.explain(images, target)

    def export_metadata(self) -> dict | None:
        """The served version's `psyattr.json` (framing, outputs, scales) from its `metadata` signature, or None.

        None for exports without one (made before psyattr recorded framings, or by other tools).
        """
        if self._metadata is None:
            if "metadata" not in self.metadata():
                self._metadata = {}
            else:
                answer = self._call(self._transport.predict, "metadata", {"request": np.array([b""], dtype=object)})
                value = answer["psyattr_json"].ravel()[0]
                self._metadata = json.loads(value.decode() if isinstance(value, bytes) else value)
        return self._metadata or None

    @property
    def framing(self) -> dict | None:
        """The framing record of the served model (how its photos must be framed), or None when it records none."""
        return (self.export_metadata() or {}).get("framing")

    def _output_names(self) -> list[str] | None:
        return (self.export_metadata() or {}).get("outputs")

    def metadata(self) -> dict[str, object]:
        """The served version's SignatureDefs by name (GetModelMetadata)."""
        return self._call(self._transport.metadata)

    def status(self) -> list[tuple[int, str]]:
        """(version, state name) for every version the server knows of (GetModelStatus)."""
        return self._call(self._transport.status)

    def close(self) -> None:
        """Close the channel (or the REST connections)."""
        self._transport.close()

    def __enter__(self) -> ExplainerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
