"""The deployment examples in conf/ (systemd, compose, Kubernetes, the image) stay true to the code.

Every MESHRAG_* variable they set must be a setting of meshrag.config (or one of the few
variables that are not settings), and the values they give must pass load_config as one
node would see them; every `meshrag start` flag must parse; the settings a production node
needs (secret from a file, data volume, zone, thread budget, API keys, TLS, probes, graceful
stop) must be there. So a renamed key or flag fails here instead of in someone's cluster.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from meshrag import config as meshrag_config
from meshrag.cli import build_parser
from meshrag.config import ENV_NOT_SETTINGS, Config, load_config, parse_host_port

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SYSTEMD_UNIT = CONF / "systemd" / "meshrag.service"
SYSTEMD_ENV = CONF / "systemd" / "meshrag.env"
COMPOSE = CONF / "compose" / "compose.yaml"
DOCKERFILE = CONF / "docker" / "Dockerfile"
ENTRYPOINT = CONF / "docker" / "entrypoint.sh"
K8S = CONF / "k8s"
DATA_DIR = "/var/lib/meshrag"
# MESHRAG_* variables the examples set that are not node settings: client-side ones (the CA a
# client trusts) and load_config's own (the config file).
CLIENT_ENV = {"MESHRAG_CA_FILE", "MESHRAG_API_KEY"}
SETTING_ENV = {meshrag_config._env_name(key): key for key in meshrag_config._known_keys(Config())}


def check_env(env: dict[str, str], where: str) -> Any:
    """Every MESHRAG_* name is a setting (or a known non-setting), and load_config accepts the values."""
    names = {name for name in env if name.startswith("MESHRAG_")}
    unknown = names - set(SETTING_ENV) - ENV_NOT_SETTINGS - CLIENT_ENV
    assert not unknown, f"{where}: {sorted(unknown)} name no setting of meshrag.config"
    assert "MESHRAG_NODE_SECRET" not in env, f"{where}: the cluster secret inline; give node.secret_file"
    settings = {name: value for name, value in env.items() if name in SETTING_ENV}
    # The image's config file is conf/meshrag.toml, copied in.
    settings["MESHRAG_CONFIG"] = str(CONF / "meshrag.toml")
    return load_config(environ=settings)


def check_production(env: dict[str, str], where: str, *, tls: bool = True) -> Any:
    """load_config accepts the node's variables, and they hold what a production node needs."""
    config = check_env(env, where)
    node = config.node
    assert node.secret_file and not node.secret and not node.dev, f"{where}: secret from a file, not --dev"
    assert node.data_dir == DATA_DIR, f"{where}: data_dir {node.data_dir}"
    assert node.join and node.advertise, f"{where}: seeds and an advertised address"
    assert config.api.keys, f"{where}: API keys on"
    assert (bool(node.tls_cert) and bool(node.tls_key) and bool(node.tls_ca)) == tls, f"{where}: TLS"
    for key in ("MESHRAG_EMBEDDER_THREADS", "MESHRAG_STORAGE_THREADS"):
        assert key in env, f"{where}: thread budget {key} not set"
    if "generator" in node.roles:
        assert "MESHRAG_GENERATION_THREADS" in env, f"{where}: a generator without generation.threads"
    return config


def start_args(command: str) -> list[str]:
    """The arguments after `meshrag start` in a shell command line."""
    words = shlex.split(command)
    for i, word in enumerate(words):
        if word.endswith("meshrag") and words[i + 1:i + 2] == ["start"]:
            rest = []
            for arg in words[i + 2:]:
                if arg in ("&&", ";", "|", "||"):
                    break
                rest.append(arg)
            return rest
    raise AssertionError(f"no `meshrag start` in {command!r}")


def check_start_flags(args: list[str], where: str) -> None:
    try:
        parsed = build_parser().parse_args(["start", *args])
    except SystemExit:
        pytest.fail(f"{where}: `meshrag start {' '.join(args)}` does not parse")
    assert parsed.command == "start"
    assert not parsed.secret, f"{where}: --secret on the command line shows in ps; use --secret-file"


def seed_creates_cluster(nodes: dict[str, Any]) -> list[str]:
    """The nodes that create the cluster: no seed but themselves (node.py _seeds)."""
    return [name for name, config in nodes.items() if not [s for s in config.node.join if s != config.advertise_address]]


# ------------------------------------------------------------------ systemd
def unit_entries(path: Path) -> Iterator[tuple[str, str, str]]:
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        yield section, key.strip(), value.strip()


def env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, sep, value = line.partition("=")
            assert sep, f"{path}: {line!r} is not NAME=value"
            env[name] = value
    return env


def test_systemd_unit_is_hardened_and_its_settings_exist() -> None:
    entries = list(unit_entries(SYSTEMD_UNIT))
    service = {}
    for section, key, value in entries:
        if section == "Service":
            service.setdefault(key, []).append(value)
    env = env_file(SYSTEMD_ENV)
    for assignment in service["Environment"]:
        for word in shlex.split(assignment):
            name, _, value = word.partition("=")
            env[name] = value.replace("%d", "/run/credentials/meshrag.service")
    check_production(env, "systemd")
    assert "cluster.secret:/etc/meshrag/cluster.secret" in service["LoadCredential"]
    check_start_flags(start_args(service["ExecStart"][0]), "systemd ExecStart")
    one = {key: values[-1] for key, values in service.items()}
    assert one["User"] == "meshrag" and one["ProtectSystem"] == "strict" and one["NoNewPrivileges"] == "yes"
    assert DATA_DIR in one["ReadWritePaths"].split()
    assert int(one["LimitNOFILE"]) >= 65536
    assert one["Restart"] == "on-failure" and one["KillSignal"] == "SIGTERM"
    assert int(one["TimeoutStopSec"]) >= 30
    assert "MemoryMax" in one
    assert "$$READY_URL" in one["ExecStartPost"] and env["READY_URL"].endswith("/ready")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_finds_nothing_but_the_missing_install() -> None:
    result = subprocess.run(["systemd-analyze", "verify", str(SYSTEMD_UNIT)], capture_output=True, text=True, timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if line.strip() and "/opt/meshrag/.venv/bin/meshrag is not executable" not in line]
    assert not complaints, "\n".join(complaints)


# ------------------------------------------------------------------ compose
def compose_services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def test_compose_is_a_three_node_cluster_with_one_generator() -> None:
    document = yaml.safe_load(COMPOSE.read_text())
    services = document["services"]
    assert len(services) == 3
    configs = {}
    for name, service in services.items():
        env = {key: str(value) for key, value in service["environment"].items()}
        config = configs[name] = check_production(env, f"compose {name}", tls=False)
        assert any(volume.endswith(f":{DATA_DIR}") and volume.split(":")[0] in document["volumes"] for volume in service["volumes"])
        assert service["secrets"] == ["cluster_secret"] and config.node.secret_file == "/run/secrets/cluster_secret"
        assert "/ready" in " ".join(service["healthcheck"]["test"])
        assert service["stop_signal"] == "SIGTERM" and service["restart"] == "on-failure"
        assert service["deploy"]["resources"]["limits"]["cpus"] and service["deploy"]["resources"]["limits"]["memory"]
        assert parse_host_port(config.node.advertise)[0] == service["hostname"]
    assert sum("generator" in config.node.roles for config in configs.values()) == 1
    assert len({config.node.zone for config in configs.values()}) == 3
    assert seed_creates_cluster(configs) == ["n1"]
    assert document["secrets"]["cluster_secret"] == {"file": "./cluster.secret"}
    build = services["n1"]["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE


def test_the_image_installs_torch_first_and_its_settings_exist() -> None:
    text = DOCKERFILE.read_text()
    torch = text.index("pip install --no-cache-dir torch==2.13.0")
    assert torch < text.index('pip install --no-cache-dir "/src[cpu]"')
    env: dict[str, str] = {}
    for block in re.findall(r"^ENV (.+?)(?<!\\)$", text, flags=re.M | re.S):
        for word in shlex.split(block.replace("\\\n", " ")):
            name, _, value = word.partition("=")
            env[name] = value
    check_env(env, "Dockerfile")
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which is not in the repository"
    assert subprocess.run(["sh", "-n", str(ENTRYPOINT)], timeout=30).returncode == 0
    check_start_flags(start_args(re.search(r'^CMD \["(.+)"\]', text, flags=re.M).group(1).replace('", "', " ")), "Dockerfile CMD")


# ------------------------------------------------------------------ Kubernetes
def k8s_objects() -> dict[str, Any]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objects = {}
    for resource in kustomization["resources"]:
        for item in yaml.safe_load_all((K8S / resource).read_text()):
            objects[f"{item['kind']}/{item['metadata']['name']}"] = item
    return objects


def container_env(container: dict[str, Any], pod: str, namespace: str) -> dict[str, str]:
    env: dict[str, str] = {}
    fields = {"metadata.name": pod, "metadata.namespace": namespace, "spec.nodeName": "worker-1"}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], str(item["value"]))
        else:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


def test_kubernetes_statefulset_services_and_budget() -> None:
    objects = k8s_objects()
    sts = objects["StatefulSet/meshrag"]
    headless = objects[f"Service/{sts['spec']['serviceName']}"]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert {p["protocol"] for p in headless["spec"]["ports"]} == {"TCP", "UDP"}
    assert objects["Service/meshrag-api"]["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert objects["PodDisruptionBudget/meshrag"]["spec"]["maxUnavailable"] == 1
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    namespace = "meshrag"
    configs = {}
    for ordinal in range(sts["spec"]["replicas"]):
        name = f"meshrag-{ordinal}"
        env = container_env(container, name, namespace)
        config = configs[name] = check_production(env, f"k8s {name}")
        assert config.node.advertise == f"{name}.{headless['metadata']['name']}.{namespace}.svc:7070"
    assert seed_creates_cluster(configs) == ["meshrag-0"]
    check_start_flags(start_args(container["command"][-1]), "k8s command")
    assert "MESHRAG_NODE_ZONE" in container["command"][-1]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]] == DATA_DIR
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert all(container[p]["httpGet"]["scheme"] == "HTTPS" for p in ("startupProbe", "livenessProbe", "readinessProbe"))
    assert pod["terminationGracePeriodSeconds"] >= 30
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    assert pod["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert pod["securityContext"]["runAsNonRoot"] is True
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert secrets == {g["name"] for g in kustomization["secretGenerator"]}
    assert all("literals" not in g for g in kustomization["secretGenerator"]), "secrets from files, never inline"
    ignored = (K8S / ".gitignore").read_text().split()
    assert all(f in ignored for g in kustomization["secretGenerator"] for f in g["files"])


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_builds_every_object_in_the_namespace(tmp_path: Path) -> None:
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    for name in ("cluster.secret", "tls.crt", "tls.key", "ca.crt"):
        (copy / name).write_text("placeholder for the build\n")
    result = subprocess.run(["kubectl", "kustomize", str(copy)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    built = list(yaml.safe_load_all(result.stdout))
    kinds = sorted(item["kind"] for item in built)
    assert kinds == sorted(["ClusterRole", "ClusterRoleBinding", "PodDisruptionBudget", "Secret", "Secret", "Service", "Service",
                            "ServiceAccount", "StatefulSet"])
    for item in built:
        if not item["kind"].startswith("Cluster"):
            assert item["metadata"]["namespace"] == "meshrag", item["metadata"]
    (sts,) = [item for item in built if item["kind"] == "StatefulSet"]
    assert {c["image"] for c in sts["spec"]["template"]["spec"]["containers"]} == {"registry.example.com/meshrag:0.1"}


def test_no_example_gives_the_secret_inline() -> None:
    for path in [SYSTEMD_UNIT, SYSTEMD_ENV, COMPOSE, DOCKERFILE, *K8S.glob("*.yaml")]:
        text = path.read_text()
        assert not re.search(r"--secret(?!-file)\b|MESHRAG_NODE_SECRET\s*[=:]", text), f"{path}: an inline secret"
