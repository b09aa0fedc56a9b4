"""TF Serving's configuration files: `models.config` (model_config_list) and `batching_parameters.txt`."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from psyattr.export import list_versions


@dataclass(frozen=True)
class ModelEntry:
    """One served model: where its versions are, which of them to serve, and their labels."""

    name: str
    base_path: Path
    policy: str = "latest"  # "latest", "all" or "specific"
    num_versions: int = 1  # for "latest"
    versions: tuple[int, ...] = ()  # for "specific"
    labels: dict[str, int] = field(default_factory=dict)

    def aspired(self, available: list[int]) -> list[int]:
        """The versions to serve among `available` (ascending), by the version policy."""
        if self.policy == "all":
            return list(available)
        if self.policy == "specific":
            return [v for v in available if v in self.versions]
        return list(available[-self.num_versions:])


class ConfigError(ValueError):
    """A configuration file that cannot be used."""


def _resolve_base_path(base_path: str, models_dir: Path | None) -> Path:
    path = Path(base_path)
    if path.is_dir() or models_dir is None:
        return path
    # One file serves both the Docker image (base paths under /models) and the embedded server: a base
    # path that does not exist here is looked up by its last component under the models folder.
    return models_dir / path.name


def read_model_config(path: str | os.PathLike, models_dir: str | os.PathLike | None = None) -> list[ModelEntry]:
    """Parse a TF Serving `--model_config_file` (text `ModelServerConfig` with a `model_config_list`)."""
    path = Path(path)
    try:
        config = text_format.Parse(path.read_text(encoding="utf-8"), model_server_config_pb2.ModelServerConfig())
    except (text_format.ParseError, OSError) as err:
        raise ConfigError(f"cannot read model config {path}: {err}") from err
    if not config.HasField("model_config_list"):
        raise ConfigError(f"{path} has no model_config_list (custom_model_config is not supported)")
    entries, seen = [], set()
    for model in config.model_config_list.config:
        if not model.name or not model.base_path:
            raise ConfigError(f"{path}: every config needs a name and a base_path, got "
                              f"{text_format.MessageToString(model, as_one_line=True)!r}")
        if model.name in seen:
            raise ConfigError(f"{path}: model {model.name!r} is configured twice")
        seen.add(model.name)
        if model.model_platform not in ("", "tensorflow"):
            raise ConfigError(f"{path}: model {model.name!r} has model_platform {model.model_platform!r}; "
                              "only 'tensorflow' SavedModels are served")
        policy = model.model_version_policy.WhichOneof("policy_choice") or "latest"
        num = model.model_version_policy.latest.num_versions or 1
        versions = tuple(model.model_version_policy.specific.versions)
        if policy == "specific" and not versions:
            raise ConfigError(f"{path}: model {model.name!r} has a specific version policy without versions")
        base_path = _resolve_base_path(model.base_path, Path(models_dir) if models_dir else None)
        entries.append(ModelEntry(model.name, base_path, policy, num, versions, dict(model.version_labels)))
    return entries


def discover_models(models_dir: str | os.PathLike) -> list[ModelEntry]:
    """Without a config file: every folder of `models_dir` holding integer versions, latest version served."""
    root = Path(models_dir)
    if not root.is_dir():
        raise ConfigError(f"models folder {root} does not exist: export a model first (psyattr export RUN_DIR "
                          f"--name NAME --out {root})")
    return [ModelEntry(p.name, p) for p in sorted(root.iterdir())
            if p.is_dir() and not p.name.startswith(".") and list_versions(p)]


@dataclass(frozen=True)
class BatchingParameters:
    """TF Serving's `--batching_parameters_file` fields that the embedded server implements."""

    max_batch_size: int = 16
    batch_timeout_micros: int = 2000
    max_enqueued_batches: int = 64
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise ConfigError("max_batch_size, num_batch_threads and max_enqueued_batches must be at least 1")
        if self.batch_timeout_micros < 0:
            raise ConfigError("batch_timeout_micros must not be negative")
        sizes = self.allowed_batch_sizes
        if sizes and (list(sizes) != sorted(set(sizes)) or sizes[-1] != self.max_batch_size):
            raise ConfigError(f"allowed_batch_sizes {list(sizes)} must increase and end with max_batch_size "
                              f"{self.max_batch_size}")


# `name { value: N }` (wrapper fields), `name: N` (repeated/plain fields), `# comments`.
_WRAPPED = re.compile(r"(\w+)\s*\{\s*value\s*:\s*([^\s}]+)\s*\}")
_PLAIN = re.compile(r"(\w+)\s*:\s*([^\s#]+)")
_IGNORED = {"thread_pool_name", "pad_variable_length_inputs", "enable_large_batch_splitting"}


def read_batching_parameters(path: str | os.PathLike) -> BatchingParameters:
    """Parse a TF Serving batching parameters file (text `BatchingParameters`)."""
    path = Path(path)
    text = "\n".join(line.split("#", 1)[0] for line in path.read_text(encoding="utf-8").splitlines())
    values: dict[str, object] = {}
    known = {f.name for f in dataclasses.fields(BatchingParameters)}
    rest = _WRAPPED.sub(" ", text)
    items = _WRAPPED.findall(text) + _PLAIN.findall(rest)
    if _PLAIN.sub(" ", rest).strip():
        raise ConfigError(f"cannot parse {path}: expected lines like 'max_batch_size {{ value: 16 }}'")
    for name, raw in items:
        if name in _IGNORED:
            continue
        if name not in known:
            raise ConfigError(f"{path}: unknown batching parameter {name!r}; known: {', '.join(sorted(known))}")
        try:
            number = int(raw.strip('"'))
        except ValueError:
            raise ConfigError(f"{path}: {name} must be an integer, got {raw}") from None
        if name == "allowed_batch_sizes":
            values[name] = (*values.get(name, ()), number)
        else:
            values[name] = number
    return BatchingParameters(**values)
