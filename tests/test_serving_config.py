"""TF Serving's config files as shipped in serving/, version policies, and the batch queue on its own."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

from psyattr.serving.batching import Batcher
from psyattr.serving.config import (BatchingParameters, ConfigError, discover_models, read_batching_parameters,
                                    read_model_config)
from psyattr.export import list_versions
from psyattr.serving.errors import ServingError

SERVING = Path(__file__).resolve().parents[1] / "serving"


def test_the_shipped_config_files_parse_and_map_docker_paths_to_the_models_folder(tmp_path):
    entries = read_model_config(SERVING / "models.config", tmp_path)
    assert [e.name for e in entries] == ["psyattr_attractive", "psyattr_gender"]
    assert entries[0].base_path == tmp_path / "psyattr_attractive" and entries[0].policy == "latest"
    assert read_batching_parameters(SERVING / "batching_parameters.txt") == BatchingParameters(
        max_batch_size=16, batch_timeout_micros=2000, max_enqueued_batches=64, num_batch_threads=2)
    assert "--xla_cpu_compilation_enabled=true" in (SERVING / "README.md").read_text()


def test_version_policies_and_labels_are_read(tmp_path):
    (tmp_path / "local").mkdir()
    config = tmp_path / "models.config"
    config.write_text("""model_config_list {
      config { name: "a" base_path: "/models/a" model_version_policy { specific { versions: 1 versions: 3 } }
               version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 } }
      config { name: "b" base_path: "%s" model_version_policy { all {} } }
      config { name: "c" base_path: "/models/c" model_version_policy { latest { num_versions: 2 } } }
    }""" % (tmp_path / "local"))
    a, b, c = read_model_config(config, tmp_path / "saved_models")
    assert a.labels == {"stable": 1, "canary": 3} and a.aspired([1, 2, 3, 4]) == [1, 3]
    assert b.base_path == tmp_path / "local" and b.aspired([1, 2, 3]) == [1, 2, 3]
    assert c.base_path == tmp_path / "saved_models" / "c" and c.aspired([1, 2, 3]) == [2, 3]


@pytest.mark.parametrize("text, message", [
    ('model_config_list { config { name: "a" } }', "needs a name and a base_path"),
    ('model_config_list { config { name: "a" base_path: "/m" model_platform: "onnx" } }', "model_platform 'onnx'"),
    ('model_config_list { config { name: "a" base_path: "/m" } config { name: "a" base_path: "/n" } }',
     "configured twice"),
    ("model_config_list { config { nme: 1 } }", "cannot read model config"),
])
def test_bad_model_configs_are_refused_naming_the_problem(tmp_path, text, message):
    (tmp_path / "models.config").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_model_config(tmp_path / "models.config")


@pytest.mark.parametrize("text, message", [
    ("max_batch_size { value: 16 }\nmax_batch_sise { value: 2 }", "unknown batching parameter 'max_batch_sise'"),
    ("max_batch_size { value: many }", "must be an integer"),
    ("max_batch_size { value: 8 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4", "end with max_batch_size 8"),
    ("just some words", "cannot parse"),
])
def test_bad_batching_parameters_are_refused_naming_the_problem(tmp_path, text, message):
    (tmp_path / "batching.txt").write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_batching_parameters(tmp_path / "batching.txt")


def test_without_a_config_every_folder_with_versions_is_a_model(tmp_path, caplog):
    for folder in ("a/1", "a/2", "b/.3.partial-x", "c/notes"):
        (tmp_path / folder).mkdir(parents=True)
    assert [(e.name, e.policy) for e in discover_models(tmp_path)] == [("a", "latest")]
    # A version beyond TF Serving's int64 range is skipped with a log line, never served as the latest.
    (tmp_path / "a" / "99999999999999999999").mkdir()
    with caplog.at_level(logging.WARNING):
        assert list_versions(tmp_path / "a") == [1, 2]
    assert "version 99999999999999999999 is beyond TF Serving's largest (9223372036854775807)" in caplog.text
    with pytest.raises(ConfigError, match="models folder .* does not exist: export a model first"):
        discover_models(tmp_path / "missing")


def rows_and_batch(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A stand-in Session: doubles each row and reports the size of the batch it ran."""
    return {"doubled": feeds["x"] * 2, "batch": np.full(len(feeds["x"]), len(feeds["x"]))}


def test_the_batch_queue_pads_to_allowed_sizes_and_gives_each_request_its_rows():
    params = BatchingParameters(max_batch_size=4, batch_timeout_micros=1_000_000, num_batch_threads=1,
                                allowed_batch_sizes=(2, 4))
    batcher = Batcher(rows_and_batch, params, "test")
    barrier = threading.Barrier(3)

    def submit(i: int):
        barrier.wait()
        return batcher.submit({"x": np.array([float(i)])}, 1).result(timeout=10)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(submit, range(3)))
    batcher.close()
    assert [r["doubled"].tolist() for r in results] == [[0.0], [2.0], [4.0]]
    assert {int(r["batch"][0]) for r in results} == {4}  # 3 rows, padded to the allowed size 4
    assert batcher.batch_sizes == {3: 1}
    with pytest.raises(ServingError) as caught:
        batcher.submit({"x": np.zeros(1)}, 1)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_full_queue_answers_unavailable_and_a_too_large_task_is_refused():
    release = threading.Event()

    def slow(feeds):
        release.wait(10)
        return rows_and_batch(feeds)

    params = BatchingParameters(max_batch_size=2, batch_timeout_micros=0, num_batch_threads=1, max_enqueued_batches=1)
    batcher = Batcher(slow, params, "test")
    running = batcher.submit({"x": np.zeros(2)}, 2)
    wait_until(lambda: batcher.queued_rows == 0)  # taken by the thread, which now waits in `slow`
    queued = batcher.submit({"x": np.zeros(2)}, 2)  # fills the one batch the queue may hold
    with pytest.raises(ServingError, match="queue to which this task was submitted is full") as caught:
        batcher.submit({"x": np.zeros(1)}, 1)
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(ServingError, match="Task size 3 is larger than maximum input batch size 2"):
        batcher.submit({"x": np.zeros(3)}, 3)
    release.set()
    assert running.result(timeout=10)["doubled"].shape == queued.result(timeout=10)["doubled"].shape == (2,)
    batcher.close()
