"""serving/model_status_probe.py against a gRPC ModelService built from TF Serving's own messages."""

from __future__ import annotations

import concurrent.futures
import importlib.util
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

PROBE = Path(__file__).resolve().parents[1] / "serving" / "model_status_probe.py"
State = get_model_status_pb2.ModelVersionStatus.State


def load_probe():
    spec = importlib.util.spec_from_file_location("model_status_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = load_probe()


class _Status(model_service_pb2_grpc.ModelServiceServicer):
    """Answers GetModelStatus from `states` as TF Serving does, NOT_FOUND for a model it does not know."""

    def __init__(self):
        self.states: dict[str, list[tuple[int, int]]] = {}

    def GetModelStatus(self, request, context):  # noqa: N802 (gRPC method name)
        if request.model_spec.name not in self.states:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {request.model_spec.name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for version, state in self.states[request.model_spec.name]:
            entry = response.model_version_status.add(version=version, state=state)
            entry.status.error_code = 0
        return response


@pytest.fixture(scope="module")
def server():
    status = _Status()
    grpc_server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(status, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield status, f"127.0.0.1:{port}"
    grpc_server.stop(None)


def test_the_request_is_tf_servings_get_model_status_request():
    request = get_model_status_pb2.GetModelStatusRequest.FromString(probe.encode_request("psyattr_attractive"))
    assert request.model_spec.name == "psyattr_attractive" and not request.model_spec.HasField("version")


def test_version_states_read_a_real_response_with_large_versions_and_error_details():
    response = get_model_status_pb2.GetModelStatusResponse()
    response.model_version_status.add(version=3, state=State.AVAILABLE).status.error_code = 0
    failed = response.model_version_status.add(version=2**40, state=State.END)
    failed.status.error_code, failed.status.error_message = 3, "could not load"
    assert probe.version_states(response.SerializeToString()) == {3: State.AVAILABLE, 2**40: State.END}


@pytest.mark.parametrize("states, models, code, message", [
    ({"a": [(1, State.AVAILABLE)], "b": [(4, State.AVAILABLE)]}, ["a", "b"], 0, ""),
    ({"a": [(1, State.AVAILABLE), (2, State.LOADING)]}, ["a"], 0, ""),  # a rollover keeps serving version 1
    ({"a": [(1, State.AVAILABLE)], "b": [(1, State.LOADING)]}, ["a", "b"], 1, "b: no version is AVAILABLE"),
    ({"a": [(1, State.END)]}, ["a"], 1, "a: no version is AVAILABLE"),
    ({}, ["a"], 1, "a: NOT_FOUND: Could not find any versions of model a"),
])
def test_ready_only_when_every_model_has_an_available_version(server, capsys, states, models, code, message):
    status, address = server
    status.states = states
    assert probe.main(["--address", address, *models]) == code
    assert message in capsys.readouterr().err


def test_a_server_that_does_not_answer_fails_the_probe(capsys):
    # Nothing listens on port 1 (privileged, and no server of this project takes it).
    assert probe.main(["--address", "127.0.0.1:1", "--timeout", "2", "a"]) == 1
    assert "a: UNAVAILABLE" in capsys.readouterr().err


def test_the_script_runs_as_the_kubelet_runs_it_without_importing_tensorflow(server):
    status, address = server
    status.states = {"a": [(1, State.AVAILABLE)]}
    code = ("import runpy, sys\n"
            f"sys.argv = ['probe', '--address', '{address}', 'a']\n"
            "try:\n"
            f"    runpy.run_path({str(PROBE)!r}, run_name='__main__')\n"
            "except SystemExit as exit:\n"
            "    print(exit.code, 'tensorflow' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["0", "False"], result.stderr
