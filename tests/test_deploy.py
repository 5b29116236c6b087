"""The deployment files: the Kubernetes manifests validate against the API's schemas (offline,
from the kubernetes-validate wheel) and say what the fleet needs; the image they name runs as the
user they expect."""
from __future__ import annotations

import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from avatar_manager.settings import Settings
from conftest import ROOT

K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.y*ml") if p.name != "kustomization.yaml")
# The oldest Kubernetes these manifests are meant for, and the newest the pinned wheel knows.
KUBERNETES_VERSIONS = ["1.33.0", "1.37.0"]
NAMESPACE = "avatar-fleet"
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding"}
# Read by the worker's MuseTalk engine (contracts/musetalk_weights.py), not by the manager.
WORKER_SETTINGS = {"MODELS_DIR"}
SECRET_SETTINGS = {"API_TOKEN", "LLM_API_KEY"}
TEST_ADDRESS = "198.18.0.10"  # stands in for the node's address the downward API gives


def documents(path: Path) -> list[dict]:
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(isinstance(d, dict) for d in docs), f"{path.name}: an empty or non-object document"
    return docs


def every_document() -> list[dict]:
    return [doc for path in MANIFESTS for doc in documents(path)]


def find(kind: str, name: str) -> dict:
    found = [d for d in every_document() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def pod(kind: str, name: str) -> dict:
    return find(kind, name)["spec"]["template"]["spec"]


def container(kind: str, name: str) -> dict:
    (only,) = pod(kind, name)["containers"]
    return only


def config() -> dict[str, str]:
    return find("ConfigMap", "avatar-fleet-config")["data"]


def env_of(c: dict) -> dict[str, dict]:
    return {e["name"]: e for e in c.get("env", [])}


def fleet_containers() -> list[tuple[str, dict]]:
    """(where, container) for every container that runs the fleet's image, init containers too."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    ours = {i["name"] for i in kustomization["images"]}
    found = []
    for doc in every_document():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            if c["image"] in ours:
                found.append((f"{doc['kind']} {doc['metadata']['name']} {c['name']}", c))
    return found


def known_settings() -> set[str]:
    """The environment variables the manager reads: settings.py and README's Configuration table."""
    source = (ROOT / "avatar_manager" / "settings.py").read_text()
    names = set(re.findall(r'env(?:\.get)?\(\s*"([A-Z][A-Z0-9_]+)"', source))
    names |= set(re.findall(r'(?:_port|number)\(env,\s*"([A-Z][A-Z0-9_]+)"', source))
    section = (ROOT / "README.md").read_text().split("### Configuration", 1)[1]
    table = re.search(r"^\|.*?(?=^[^|])", section, re.M | re.S).group(0)
    for row in table.splitlines():
        first_cell = row.split("|")[1]
        names |= set(re.findall(r"`([A-Z][A-Z0-9_]+)`", first_cell))
    return names


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_validates_strictly_against_the_kubernetes_schema(path, version):
    for doc in documents(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata'].get('name')}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}")


def test_the_kustomization_lists_every_manifest_and_nothing_else():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources)), "a manifest listed twice"
    assert set(resources) == {p.name for p in MANIFESTS}
    assert kustomization["namespace"] == NAMESPACE
    for doc in every_document():
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"].get("namespace") == NAMESPACE, f"{doc['kind']} {doc['metadata']['name']}"
    assert find("Namespace", NAMESPACE)


def test_every_image_is_the_fleets_mapped_by_the_kustomization_or_pinned():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    mapped = {i["name"]: i for i in kustomization["images"]}
    for entry in mapped.values():
        assert entry.get("newName") and re.fullmatch(r"\d+\.\d+\.\d+(-gpu)?", str(entry.get("newTag")))
    used = set()
    for doc in every_document():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            used.add(c["image"])
            if c["image"] not in mapped:
                assert re.fullmatch(r"[\w./-]+:\d+(\.\d+)+[\w.-]*", c["image"]), f"{c['image']}: not version-pinned"
    assert set(mapped) <= used, f"kustomization maps images nothing runs: {set(mapped) - used}"
    assert container("Deployment", "avatar-api")["image"] == "avatar-fleet"
    assert container("DaemonSet", "avatar-agent")["image"] == "avatar-fleet-gpu"


def test_the_api_runs_role_api_replicated_behind_its_service():
    deployment = find("Deployment", "avatar-api")
    assert deployment["spec"]["replicas"] >= 2
    api = container("Deployment", "avatar-api")
    assert api["args"] == ["serve", "--role", "api"]
    assert env_of(api)["AVATAR_MANAGER_HOST"]["value"] == "0.0.0.0"
    port = int(config()["AVATAR_MANAGER_PORT"])
    (http,) = api["ports"]
    assert http["containerPort"] == port
    (service_port,) = find("Service", "avatar-api")["spec"]["ports"]
    assert service_port["port"] == port and service_port["targetPort"] in (http["name"], port)
    assert find("Service", "avatar-api")["spec"]["selector"].items() <= \
        deployment["spec"]["template"]["metadata"]["labels"].items()
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["livenessProbe"]["httpGet"]["port"] in (http["name"], port)
    # /ready needs the token; the probe makes the request with it.
    readiness = " ".join(api["readinessProbe"]["exec"]["command"])
    assert "/ready" in readiness and "Bearer" in readiness and "API_TOKEN" in readiness
    assert {"requests", "limits"} <= api["resources"].keys()
    assert config()["FLEET_API_URL"] == f"http://avatar-api:{port}"


def test_the_agent_runs_on_every_gpu_node_on_the_hosts_network():
    spec = pod("DaemonSet", "avatar-agent")
    agent = container("DaemonSet", "avatar-agent")
    assert agent["args"] == ["serve", "--role", "agent"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["operator"] == "Exists" for t in spec["tolerations"])
    assert int(agent["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    env = env_of(agent)
    assert env["HOST_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    assert env["HOST_ADDRESS"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env["PUBLIC_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    # The agent stops its workers itself on SIGTERM, in parallel, STOP_TIMEOUT (10 s) each.
    assert spec["terminationGracePeriodSeconds"] >= 60
    assert all("lifecycle" not in c for c in spec["containers"])
    low, high = map(int, config()["WEBRTC_PORT_RANGE"].split("-"))
    assert 1024 <= low <= high <= 65535


def test_redis_keeps_an_append_only_file_on_a_volume_behind_its_service():
    redis = find("StatefulSet", "avatar-redis")
    assert redis["spec"]["replicas"] == 1
    c = container("StatefulSet", "avatar-redis")
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert any(m["name"] == claim["metadata"]["name"] and m["mountPath"] == "/data" for m in c["volumeMounts"])
    (port,) = find("Service", "avatar-redis")["spec"]["ports"]
    assert config()["REDIS_URL"] == f"redis://avatar-redis:{port['port']}/0"


def test_every_variable_the_manifests_set_is_one_the_fleet_reads():
    known = known_settings() | WORKER_SETTINGS
    assert {"REDIS_URL", "API_TOKEN", "AVATAR_DATA_DIR", "PUBLIC_HOST"} <= known  # the reading works
    set_here = set(config())
    for _, c in fleet_containers():
        set_here |= set(env_of(c))
        for source in c.get("envFrom", []):
            assert source == {"configMapRef": {"name": "avatar-fleet-config"}}
    assert set_here - known == set()


def settings_of(kind: str, name: str) -> Settings:
    """What the container's process reads: the ConfigMap, then its own env (downward API values
    and the Secret stand-ins filled in)."""
    env = dict(config())
    for variable, entry in env_of(container(kind, name)).items():
        env[variable] = entry.get("value", TEST_ADDRESS if "fieldRef" in entry.get("valueFrom", {}) else "t0ken")
    return Settings.from_env(env)


def test_the_configuration_passes_the_managers_own_checks():
    api = settings_of("Deployment", "avatar-api")
    agent = settings_of("DaemonSet", "avatar-agent")
    for settings in (api, agent):
        assert settings.redis_url and settings.api_token == "t0ken"
        assert str(settings.data_dir) == config()["AVATAR_DATA_DIR"]
    assert (api.host, api.port) == ("0.0.0.0", 8607)
    assert agent.public_host == TEST_ADDRESS


def test_the_token_comes_from_the_secret_and_is_written_nowhere():
    assert not [d for d in every_document() if d["kind"] == "Secret"], "the Secret is created by kubectl"
    assert not SECRET_SETTINGS & set(config())
    for where, c in fleet_containers():
        for variable in SECRET_SETTINGS & set(env_of(c)):
            assert "value" not in env_of(c)[variable], f"{where}: {variable} written in the manifest"
    for kind, name in (("Deployment", "avatar-api"), ("DaemonSet", "avatar-agent")):
        ref = env_of(container(kind, name))["API_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "avatar-fleet-token", "key": "API_TOKEN"}
    # The README's command creates exactly that Secret.
    readme = (K8S / "README.md").read_text()
    assert re.search(r"kubectl -n avatar-fleet create secret generic avatar-fleet-token\s*\\?\s*"
                     r"--from-literal=API_TOKEN=", readme)


def test_the_fleet_runs_as_the_images_user_on_a_read_only_root():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd .*--uid (\d+)", dockerfile).group(1))
    assert re.search(rf"^USER {uid}(:\d+)?$", dockerfile, re.M)
    assert uid != 0
    for kind, name in (("Deployment", "avatar-api"), ("DaemonSet", "avatar-agent")):
        spec = pod(kind, name)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        for c in spec["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert "runAsUser" not in c["securityContext"]
            writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
            folders = ["AVATAR_DATA_DIR", "LOG_DIR"] + (["MODELS_DIR"] if kind == "DaemonSet" else [])
            for folder in folders:
                assert config()[folder] in writable, f"{name}: {folder} is on the read-only root"
            assert "/tmp" in writable


def test_the_image_starts_the_manager_under_an_init():
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r'^ARG PYTHON_IMAGE=python:3\.12\.\d+-slim-\w+$', dockerfile, re.M)
    assert re.search(r'^ENTRYPOINT \["tini", "--", "python", "-m", "avatar_manager"\]$', dockerfile, re.M)
    assert "requirements-gpu.txt" in dockerfile and "-r requirements.txt" in dockerfile
