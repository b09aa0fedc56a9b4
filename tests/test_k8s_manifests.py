"""serving/k8s and serving/Dockerfile agree with serving/models.config: model names, base paths under the
volume, ports, probes, the ConfigMap's files and the autoscalers' targets.

models.config is parsed as TF Serving's ModelServerConfig, the parse behind
psyattr.serving.config.read_model_config; that module imports TensorFlow, seconds this file does not need.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pytest
import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "serving"
K8S = SERVING / "k8s"
PROBE_SCRIPT = SERVING / "model_status_probe.py"
STATUS_PATH = re.compile(r"^/v1/models/([^/:]+)(/metadata)?$")


@dataclass(frozen=True)
class Flags:
    """The server's command-line flags for what the manifests must agree on."""

    config: str
    batching: str
    grpc_port: str
    rest_port: str | None  # psyattr serve's --rest-port is not there yet
    models: str | None  # TF Serving takes the models folder from models.config only
    threads: str  # where the intra-op thread count is set: a flag, or "env:NAME"


# Each kustomization that deploys a server, and how its server spells the flags.
STACKS = {
    "tf-serving": (K8S, Flags("--model_config_file", "--batching_parameters_file", "--port", "--rest_api_port",
                              None, "--tensorflow_intra_op_parallelism")),
    "psyattr-serve": (K8S / "psyattr-serve", Flags("--config", "--batching-parameters", "--port", None, "--models",
                                                   "env:TF_NUM_INTRAOP_THREADS")),
}


@dataclass
class Manifest:
    """One object of a manifest file, with the file it came from for messages."""

    path: Path
    doc: dict
    generated_from: dict[str, Path] = field(default_factory=dict)  # ConfigMap key -> source file

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def name(self) -> str:
        return self.doc["metadata"]["name"]

    def where(self, field_path: str) -> str:
        return f"{self.path.relative_to(ROOT)}: {self.kind} {self.name}: {field_path}"


def read_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def load_kustomization(folder: Path) -> list[Manifest]:
    """The objects `kubectl apply -k folder` creates: its resources, recursively, and its generated ConfigMaps."""
    path = folder / "kustomization.yaml"
    (kustomization,) = read_yaml(path)
    objects = []
    for resource in kustomization.get("resources", []):
        target = (folder / resource).resolve()
        assert target.exists(), f"{path.relative_to(ROOT)}: resources: {resource} does not exist"
        objects += load_kustomization(target) if target.is_dir() else [Manifest(target, d) for d in read_yaml(target)]
    for generator in kustomization.get("configMapGenerator", []):
        sources = {Path(f).name: folder / f for f in generator.get("files", [])}
        data = {key: source.read_text(encoding="utf-8") for key, source in sources.items()}
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generator["name"]}, "data": data}
        objects.append(Manifest(path, doc, sources))
    return objects


@dataclass
class Stack:
    """The objects of one kustomization, and the server's flag names."""

    folder: Path
    flags: Flags
    objects: list[Manifest]

    def one(self, kind: str) -> Manifest:
        found = [o for o in self.objects if o.kind == kind]
        assert len(found) == 1, f"{self.folder.relative_to(ROOT)}: expected one {kind}, found {len(found)}"
        return found[0]

    @property
    def deployment(self) -> Manifest:
        return self.one("Deployment")

    @property
    def container(self) -> dict:
        (container,) = self.deployment.doc["spec"]["template"]["spec"]["containers"]
        return container

    @property
    def argv(self) -> list[str]:
        return [str(a) for a in self.container.get("command", []) + self.container.get("args", [])]

    def flag(self, name: str) -> str | None:
        argv = self.argv
        for i, arg in enumerate(argv):
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
        return None

    @property
    def ports(self) -> dict[str, int]:
        return {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}

    def port_number(self, port: int | str) -> int | None:
        """A probe's or a Service's port (a number or a container port's name) as a declared container port."""
        return self.ports.get(port) if isinstance(port, str) else port if port in self.ports.values() else None

    def volume_mount(self, source: str, name: str) -> tuple[dict, dict]:
        """The pod volume of `source` ("configMap", "persistentVolumeClaim") that refers to `name`, and its mount."""
        spec = self.deployment.doc["spec"]["template"]["spec"]
        volumes = [v for v in spec.get("volumes", []) if (v.get(source) or {}).get(
            "claimName" if source == "persistentVolumeClaim" else "name") == name]
        assert len(volumes) == 1, self.deployment.where(f"spec.template.spec.volumes: no {source} volume of {name}")
        mounts = [m for m in self.container.get("volumeMounts", []) if m["name"] == volumes[0]["name"]]
        assert len(mounts) == 1, self.deployment.where(f"volumeMounts: volume {volumes[0]['name']} is not mounted")
        return volumes[0], mounts[0]


def configured_models() -> dict[str, PurePosixPath]:
    """serving/models.config's model names and base paths."""
    config = text_format.Parse((SERVING / "models.config").read_text(encoding="utf-8"),
                               model_server_config_pb2.ModelServerConfig())
    return {m.name: PurePosixPath(m.base_path) for m in config.model_config_list.config}


@pytest.fixture(scope="module", params=list(STACKS))
def stack(request) -> Stack:
    folder, flags = STACKS[request.param]
    return Stack(folder, flags, load_kustomization(folder))


def test_the_configmap_carries_the_config_files_of_serving_byte_for_byte(stack):
    configmap = stack.one("ConfigMap")
    assert set(configmap.generated_from) == {"models.config", "batching_parameters.txt"}, \
        configmap.where(f"configMapGenerator files: {sorted(configmap.generated_from)}")
    for key, source in configmap.generated_from.items():
        original = SERVING / key
        assert source.read_bytes() == original.read_bytes(), (
            f"{source.relative_to(ROOT)} differs from {original.relative_to(ROOT)} ({configmap.where('data.' + key)}); "
            f"kustomize reads only files inside its folder, so copy it: cp {original.relative_to(ROOT)} "
            f"{source.relative_to(ROOT)}")


def test_the_server_reads_both_files_from_the_mounted_configmap(stack):
    configmap = stack.one("ConfigMap")
    _, mount = stack.volume_mount("configMap", configmap.name)
    for flag, key in ((stack.flags.config, "models.config"), (stack.flags.batching, "batching_parameters.txt")):
        expected = f"{mount['mountPath']}/{key}"
        assert stack.flag(flag) == expected, stack.deployment.where(
            f"container args: {flag} is {stack.flag(flag)!r}, the ConfigMap puts {key} at {expected}")


def test_every_model_base_path_lies_on_the_read_only_models_volume(stack):
    claim = stack.one("PersistentVolumeClaim")
    volume, mount = stack.volume_mount("persistentVolumeClaim", claim.name)
    assert mount.get("readOnly") is True and volume["persistentVolumeClaim"].get("readOnly") is True, \
        stack.deployment.where(f"volume {volume['name']}: the servers only read the models; mount it readOnly")
    root = PurePosixPath(mount["mountPath"])
    for name, base_path in configured_models().items():
        assert base_path.is_relative_to(root) and base_path != root, stack.deployment.where(
            f"volumeMounts[{mount['name']}].mountPath {root}: model {name}'s base_path {base_path} "
            "(serving/models.config) is not under it")
    if stack.flags.models:
        assert stack.flag(stack.flags.models) == str(root), stack.deployment.where(
            f"container args: {stack.flags.models} is {stack.flag(stack.flags.models)!r}, the volume is at {root}")


def test_the_server_listens_on_the_declared_container_ports(stack):
    ports = stack.ports
    for flag, name in ((stack.flags.grpc_port, "grpc"), (stack.flags.rest_port, "http")):
        if flag is None:
            continue
        value = stack.flag(flag)
        assert value is not None and int(value) == ports.get(name), stack.deployment.where(
            f"container args: {flag} is {value}, containerPort {name!r} is {ports.get(name)}")
    assert {"grpc", "http"} <= set(ports), stack.deployment.where(f"container ports {ports}: grpc and http expected")


def test_the_service_targets_the_container_ports_of_its_pods(stack):
    service = stack.one("Service")
    spec = service.doc["spec"]
    assert spec.get("type", "ClusterIP") == "ClusterIP", service.where(f"spec.type {spec.get('type')}")
    labels = stack.deployment.doc["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= labels.items(), service.where(
        f"spec.selector {spec['selector']} does not select the pods of Deployment {stack.deployment.name} ({labels})")
    targets = set()
    for port in spec["ports"]:
        target = stack.port_number(port.get("targetPort", port["port"]))
        assert target is not None, service.where(
            f"spec.ports[{port.get('name')}].targetPort {port.get('targetPort')!r} is no container port of "
            f"Deployment {stack.deployment.name} ({stack.ports})")
        assert port["port"] == target, service.where(
            f"spec.ports[{port.get('name')}].port {port['port']}: clients use the server's own port {target}")
        targets.add(target)
    assert targets == set(stack.ports.values()), service.where(
        f"spec.ports reach {sorted(targets)}, the container declares {sorted(stack.ports.values())}")


def _probes(stack: Stack) -> dict[str, dict]:
    probes = {kind: stack.container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")
              if kind in stack.container}
    for kind in ("readinessProbe", "livenessProbe"):
        assert kind in probes, stack.deployment.where(f"container {stack.container['name']}: no {kind}")
    return probes


def test_the_probes_ask_for_configured_models_on_declared_ports(stack):
    models = configured_models()
    for kind, probe in _probes(stack).items():
        where = stack.deployment.where(f"container {stack.container['name']}.{kind}")
        if "httpGet" in probe:
            port = stack.port_number(probe["httpGet"]["port"])
            assert port == stack.ports.get("http") and port is not None, \
                f"{where}.httpGet.port {probe['httpGet']['port']!r} is not the REST port ({stack.ports})"
            match = STATUS_PATH.match(probe["httpGet"]["path"])
            assert match and match[1] in models, \
                f"{where}.httpGet.path {probe['httpGet']['path']!r} asks for no model of serving/models.config {list(models)}"
        elif "tcpSocket" in probe:
            assert stack.port_number(probe["tcpSocket"]["port"]) is not None, \
                f"{where}.tcpSocket.port {probe['tcpSocket']['port']!r} is no container port ({stack.ports})"
        elif "exec" in probe:
            command = [str(a) for a in probe["exec"]["command"]]
            assert command[:2] == ["python", dockerfile_probe_path()], \
                f"{where}.exec.command {command[:2]} does not run the probe the image holds ({dockerfile_probe_path()})"
            address = command[command.index("--address") + 1]
            assert address == f"127.0.0.1:{stack.ports.get('grpc')}", \
                f"{where}.exec.command --address {address} is not the gRPC port 127.0.0.1:{stack.ports.get('grpc')}"
            names = [a for i, a in enumerate(command[2:], 2) if not a.startswith("--")
                     and not (command[i - 1].startswith("--") and "=" not in command[i - 1])]
            assert sorted(names) == sorted(models), \
                f"{where}.exec.command asks for {names}, serving/models.config configures {list(models)}"
        else:
            raise AssertionError(f"{where}: unknown probe {sorted(probe)}")


def test_resources_are_requested_and_limited_and_threads_fit_the_cpu_limit(stack):
    resources = stack.container.get("resources", {})
    for part in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources.get(part, {})), \
            stack.deployment.where(f"resources.{part} {resources.get(part)}: cpu and memory expected")
    threads = stack.flags.threads
    if threads.startswith("env:"):
        env = {e["name"]: e.get("value") for e in stack.container.get("env", [])}
        value = env.get(threads[4:])
    else:
        value = stack.flag(threads)
    assert value is not None and float(value) == float(resources["limits"]["cpu"]), stack.deployment.where(
        f"{threads} is {value}, resources.limits.cpu is {resources['limits']['cpu']}")


def test_the_autoscaler_scales_this_deployment_on_cpu(stack):
    hpa, deployment = stack.one("HorizontalPodAutoscaler"), stack.deployment
    assert hpa.doc["apiVersion"] == "autoscaling/v2", hpa.where(f"apiVersion {hpa.doc['apiVersion']}")
    ref = hpa.doc["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == ("apps/v1", "Deployment", deployment.name), hpa.where(
        f"spec.scaleTargetRef {ref} is not Deployment {deployment.name} ({deployment.path.relative_to(ROOT)})")
    metrics = [m["resource"] for m in hpa.doc["spec"]["metrics"] if m["type"] == "Resource"]
    assert any(m["name"] == "cpu" and m["target"]["type"] == "Utilization" for m in metrics), \
        hpa.where(f"spec.metrics {hpa.doc['spec']['metrics']}: CPU utilisation expected")
    assert 1 <= hpa.doc["spec"].get("minReplicas", 1) <= hpa.doc["spec"]["maxReplicas"], hpa.where("min/maxReplicas")
    assert "replicas" not in deployment.doc["spec"], deployment.where(
        "spec.replicas: the autoscaler owns the count; a number here resets it on every kubectl apply")


def test_tf_serving_runs_the_release_of_the_tensorflow_that_exports():
    container = Stack(*STACKS["tf-serving"], load_kustomization(K8S)).container
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    tensorflow = re.search(r"^tensorflow>=(\d+\.\d+)", setup["options"]["install_requires"], re.M)[1]
    assert re.fullmatch(rf"tensorflow/serving:{re.escape(tensorflow)}\.\d+", container["image"]), \
        f"serving/k8s/deployment.yaml: image {container['image']} is not a TF Serving {tensorflow} (setup.cfg)"


# ---- serving/Dockerfile ------------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of serving/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", "\n".join(line for line in (SERVING / "Dockerfile").read_text().splitlines()
                                           if not line.lstrip().startswith("#")))
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip()) for line in text.splitlines() if line.strip()]


def dockerfile_probe_path() -> str:
    """Where serving/Dockerfile puts the probe script."""
    copies = [args.split() for instruction, args in dockerfile() if instruction == "COPY"]
    (destination,) = [c[-1] for c in copies if c[0] == str(PROBE_SCRIPT.relative_to(ROOT))]
    return destination


def test_the_dockerfile_runs_what_the_psyattr_serve_deployment_runs():
    instructions = dockerfile()
    stack = Stack(*STACKS["psyattr-serve"], load_kustomization(STACKS["psyattr-serve"][0]))
    assert ("FROM", "python:3.11-slim") in instructions, "serving/Dockerfile: FROM python:3.11-slim expected"
    (cmd,) = [json.loads(args) for instruction, args in instructions if instruction == "CMD"]
    assert cmd == stack.argv, (f"serving/Dockerfile: CMD {cmd} differs from "
                               f"{stack.deployment.where('container command + args')} {stack.argv}")
    exposed = {int(p.split("/")[0]) for i, args in instructions if i == "EXPOSE" for p in args.split()}
    assert exposed == set(stack.ports.values()), (f"serving/Dockerfile: EXPOSE {sorted(exposed)} differs from "
                                                  f"{stack.deployment.where('container ports')} {stack.ports}")
    images = {i["name"] for i in read_yaml(stack.folder / "kustomization.yaml")[0].get("images", [])}
    assert stack.container["image"] in images, stack.deployment.where(
        f"container image {stack.container['image']!r}: the kustomization's images: entries {sorted(images)} "
        "name the registry copy of serving/Dockerfile's image")


def test_the_build_context_lets_through_everything_the_dockerfile_copies():
    admitted = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")}
    for instruction, args in dockerfile():
        if instruction == "COPY":
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"serving/Dockerfile: COPY {source}: no such file"
                assert source.rstrip("/") in admitted, f".dockerignore: !{source} missing, so COPY {source} fails"


# ---- the files around the kustomizations ------------------------------------------------------------------

def test_every_manifest_is_deployed_by_a_kustomization_or_is_the_model_loader():
    reached = {m.path for folder, _ in STACKS.values() for m in load_kustomization(folder)}
    loader = K8S / "model-loader.yaml"
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name != "kustomization.yaml" and path != loader:
            assert path in reached, f"{path.relative_to(ROOT)} is listed in no kustomization's resources"


def test_the_model_loader_writes_the_volume_where_the_servers_read_it():
    stack = Stack(*STACKS["tf-serving"], load_kustomization(K8S))
    claim = stack.one("PersistentVolumeClaim")
    _, server_mount = stack.volume_mount("persistentVolumeClaim", claim.name)
    (pod,) = read_yaml(K8S / "model-loader.yaml")
    loader = Manifest(K8S / "model-loader.yaml", pod)
    (volume,) = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"]["claimName"] == claim.name, loader.where(
        f"spec.volumes[{volume['name']}].persistentVolumeClaim.claimName is not {claim.name}")
    (mount,) = [m for c in pod["spec"]["containers"] for m in c["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] == server_mount["mountPath"] and not mount.get("readOnly"), loader.where(
        f"volumeMounts: {mount} should mount {claim.name} read-write at {server_mount['mountPath']}, as the servers see it")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (for kubectl kustomize) is not installed")
@pytest.mark.parametrize("name", list(STACKS))
def test_kustomize_builds_the_objects_these_tests_read(name):
    folder = STACKS[name][0]
    built = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    rendered = list(yaml.safe_load_all(built.stdout))
    configmaps = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ConfigMap"}
    expected = {(m.kind, m.name) for m in load_kustomization(folder)}
    # kustomize appends a content hash to generated ConfigMaps and rewrites the references to it.
    unhashed = {(d["kind"], d["metadata"]["name"].rsplit("-", 1)[0] if d["kind"] == "ConfigMap" else d["metadata"]["name"])
                for d in rendered}
    assert unhashed == expected
    (configmap,) = configmaps.values()
    assert configmap["data"]["models.config"] == (SERVING / "models.config").read_text(encoding="utf-8")
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    volumes = [v["configMap"]["name"] for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert volumes == [configmap["metadata"]["name"]]
