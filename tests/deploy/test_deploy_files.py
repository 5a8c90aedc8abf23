"""Static checks of the deployment files: Dockerfile, docker-compose.yml and deploy/k8s.

No Docker engine or cluster is needed; these catch the mistakes that would only show at deploy time:
a setting name that the service does not read, a value it rejects, a command the CLI does not have, a
volume or ConfigMap reference that points nowhere, a Service that selects no pod."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from core.settings import Settings  # noqa: E402
from model.checkpoint_source import HUB_SCHEME, S3_SCHEME, HubLocation, S3Location  # noqa: E402
from tests.deploy.files import (  # noqa: E402
    COMPOSE, DOCKERFILE, K8S, LIFECYCLE, OBJECT_STORAGE, as_args, interpolate, load_all, of_kind,
)
from tests.paths import ROOT  # noqa: E402

NAMESPACE = "onediffusion"
APP_SERVICES = ("api", "worker", "webhooks")
ROLES = {"api": "serve", "worker": "worker", "webhooks": "webhooks"}

# Read by the code (logging, attention backend) or by the runtime, not by Settings.
EXTRA_ENV = {"PYTHONUNBUFFERED", "LOG_LEVEL", "LOG_FORMAT", "RQ_LOG_LEVEL", "ONEDIFFUSION_ATTENTION", "NVIDIA_VISIBLE_DEVICES",
             # read by boto3 when STORAGE_URL names object storage
             "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
# Image build plumbing in the Dockerfile.
DOCKERFILE_ENV = {"PATH", "VIRTUAL_ENV", "DEBIAN_FRONTEND", "PYTHONDONTWRITEBYTECODE", "PIP_NO_CACHE_DIR",
                  "PIP_DISABLE_PIP_VERSION_CHECK"}
SETTINGS_ENV = {name.upper() for name in Settings.model_fields}


# ---- loading -------------------------------------------------------------------------------------------
def yaml_files() -> list[Path]:
    return [COMPOSE, *sorted(K8S.glob("*.yaml")), *sorted(K8S.glob("*.yml")), *sorted(OBJECT_STORAGE.glob("*.yaml"))]


def workloads(manifests) -> dict[str, dict]:
    return {**of_kind(manifests, "Deployment"), **of_kind(manifests, "StatefulSet")}


def container_env(manifests, container: dict) -> dict[str, str]:
    """The environment a container gets: its ConfigMaps' data, then its own env."""
    maps = of_kind(manifests, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(maps[source["configMapRef"]["name"]].get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "")
    return env


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: interpolate("" if value is None else value) for key, value in env.items()}


def parse_volume(volume) -> tuple[str, str, str]:
    """A compose short-syntax volume `SOURCE:TARGET[:MODE]`, interpolated -> (source, target, mode)."""
    if isinstance(volume, dict):
        return str(volume.get("source", "")), volume["target"], "ro" if volume.get("read_only") else "rw"
    source, target, *mode = interpolate(volume).split(":")
    return source, target, (mode[0] if mode else "rw")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_env() -> dict[str, str]:
    env = {}
    for word, rest in dockerfile_instructions():
        if word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
    return env


def pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def valid_command(name: str) -> bool:
    """Whether `onediffusion NAME` is a command of cli.py (its --help exits 0; an unknown one exits 2)."""
    import contextlib
    import io

    import cli

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main([name, "--help"])
        except SystemExit as exc:
            return exc.code == 0
    return False


# ---- every file ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = load_all(path)
    assert docs, f"{path} is empty"
    assert all(isinstance(doc, dict) for doc in docs)


def test_cli_check_itself_works():
    assert valid_command("serve") and valid_command("worker") and valid_command("webhooks")
    assert not valid_command("no-such-command")


# ---- Dockerfile ----------------------------------------------------------------------------------------
def test_dockerfile_user_is_not_root():
    users = [rest for word, rest in dockerfile_instructions() if word == "USER"]
    assert users, "the Dockerfile sets no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), users[-1]


def test_dockerfile_healthcheck_expose_entrypoint():
    instructions = dockerfile_instructions()
    words = [word for word, _ in instructions]
    health = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert health and "/healthz" in health[-1] and "NONE" not in health[-1].upper().split()
    assert any(word == "EXPOSE" and "8000" in rest.split() for word, rest in instructions)
    assert "ENTRYPOINT" in words
    (entrypoint,) = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert entrypoint == '["onediffusion"]'
    (cmd,) = [rest for word, rest in instructions if word == "CMD"]
    assert cmd == '["serve"]'


def test_dockerfile_installs_torch_before_the_project():
    instructions = dockerfile_instructions()
    runs = [rest for word, rest in instructions if word == "RUN"]
    torch_runs = [i for i, rest in enumerate(runs) if re.search(r"pip install .*(torch==|\$\{?TORCH_SPEC)", rest)]
    project_runs = [i for i, rest in enumerate(runs) if re.search(r"pip install (\S+ )*\.(\[[^]]*\])?(\s|$)", rest)]
    assert torch_runs, "the Dockerfile does not install torch on its own"
    assert project_runs, "the Dockerfile does not `pip install .`"
    assert torch_runs[0] < project_runs[0], "torch must be installed before the project"
    pins = re.findall(r"torch==[0-9][^\s\"']*", "\n".join(rest for word, rest in instructions if word in ("RUN", "ARG")))
    assert pins, "torch is not pinned in the Dockerfile"
    makefile = ROOT / "Makefile"
    if makefile.is_file():
        match = re.search(r"TORCH_SPEC\s*\?=\s*(\S+)", makefile.read_text())
        if match:
            assert match.group(1) in pins, f"the Dockerfile's torch {pins} differs from the Makefile's {match.group(1)}"


def test_dockerfile_copies_what_the_package_needs():
    project = pyproject()
    copied = set()
    for word, rest in dockerfile_instructions():
        if word == "COPY":
            parts = [p for p in shlex.split(rest) if not p.startswith("--")]
            copied |= {p.rstrip("/") for p in parts[:-1]}
    tool = project["tool"]["setuptools"]
    needed = {pkg.split(".")[0] for pkg in tool["packages"]} | {f"{m}.py" for m in tool.get("py-modules", [])}
    needed |= {"pyproject.toml", project["project"]["readme"]}
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"


def test_dockerfile_copy_sources_exist():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for word, rest in dockerfile_instructions():
        if word == "COPY" and "--from" not in rest:
            for source in [p for p in shlex.split(rest) if not p.startswith("--")][:-1]:
                source = source.rstrip("/")
                assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist: docker build fails"
                assert source not in ignored, f"the Dockerfile copies {source}, which .dockerignore leaves out"


def test_dockerignore_keeps_the_context_small():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for entry in (".venv", "var", ".git", "models"):
        assert entry in ignored, entry


def test_dockerfile_env_names_are_settings():
    env = dockerfile_env()
    unknown = set(env) - SETTINGS_ENV - EXTRA_ENV - DOCKERFILE_ENV
    assert not unknown, f"the Dockerfile sets variables the service does not read: {sorted(unknown)}"
    assert env["HOST"] == "0.0.0.0"
    Settings.from_env({k: v for k, v in env.items() if k in SETTINGS_ENV})


# ---- docker-compose.yml --------------------------------------------------------------------------------
def test_compose_services(compose):
    services = compose["services"]
    for name in ("redis", *APP_SERVICES):
        assert name in services, name
    for name in APP_SERVICES:
        args = as_args(services[name]["command"])
        assert args == [ROLES[name]], (name, args)
        assert valid_command(args[0])


def test_compose_redis_persists(compose):
    redis = compose["services"]["redis"]
    args = as_args(redis["command"])
    joined = " ".join(args)
    assert "--appendonly yes" in joined and "--appendfsync always" in joined, joined
    assert "/data" in [target for _, target, _ in map(parse_volume, redis["volumes"])]
    assert "redis-cli" in " ".join(as_args(redis["healthcheck"]["test"]))


def test_compose_api_publishes_8000(compose):
    ports = compose["services"]["api"]["ports"]
    published = [str(p).split(":")[-2:] if not isinstance(p, dict) else [str(p["published"]), str(p["target"])]
                 for p in ports]
    assert ["8000", "8000"] in published, ports


def test_compose_worker_reserves_an_nvidia_gpu(compose):
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert worker["healthcheck"].get("disable") is True, "the worker has no HTTP port: its healthcheck must be off"


def test_compose_volumes(compose):
    services = compose["services"]
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source, target, _ = parse_volume(volume)
            assert target.startswith("/"), (name, volume)
            if not source.startswith((".", "/", "~")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
    for name in ("api", "worker"):
        env = {**dockerfile_env(), **compose_env(services[name])}
        mounts = {target: source for source, target, _ in map(parse_volume, services[name]["volumes"])}
        assert mounts.get(env["RESULTS_DIR"]) == "results", f"{name} lacks the shared results volume at {env['RESULTS_DIR']}"
    model = compose_env(services["worker"])["ONEDIFFUSION_MODEL"]
    ro_mounts = [target for _, target, mode in map(parse_volume, services["worker"]["volumes"]) if mode == "ro"]
    assert any(model.startswith(m.rstrip("/") + "/") for m in ro_mounts), (model, ro_mounts)


def test_compose_depends_on_healthy_redis(compose):
    for name in APP_SERVICES:
        assert compose["services"][name]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_compose_env_names_and_values(compose):
    for name in APP_SERVICES:
        env = compose_env(compose["services"][name])
        unknown = set(env) - SETTINGS_ENV - EXTRA_ENV
        assert not unknown, f"compose {name} sets variables the service does not read: {sorted(unknown)}"
        Settings.from_env({**dockerfile_env(), **env})


# ---- deploy/k8s ----------------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest():
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml"}
    assert listed == files, f"missing: {sorted(files - listed)}, not present: {sorted(listed - files)}"
    assert kustomization.get("namespace") == NAMESPACE


def test_k8s_objects_are_in_the_namespace(manifests):
    kinds = [doc["kind"] for doc in manifests]
    assert NAMESPACE in of_kind(manifests, "Namespace")
    for doc in manifests:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc["_file"]
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == NAMESPACE, (doc["_file"], doc["metadata"]["name"])
    for kind in ("ConfigMap", "PersistentVolumeClaim", "StatefulSet", "Deployment", "Service"):
        assert kind in kinds


def test_k8s_expected_objects(manifests):
    deployments = of_kind(manifests, "Deployment")
    assert {"onediffusion-api", "onediffusion-worker", "onediffusion-webhooks"} <= set(deployments)
    assert "redis" in of_kind(manifests, "StatefulSet")
    assert {"redis", "onediffusion-api"} <= set(of_kind(manifests, "Service"))
    assert "onediffusion-settings" in of_kind(manifests, "ConfigMap")
    claims = of_kind(manifests, "PersistentVolumeClaim")
    assert "ReadWriteMany" in claims["onediffusion-results"]["spec"]["accessModes"]
    assert "onediffusion-models" not in claims, "workers fetch their weights into a node-local cache, not a shared volume"
    assert "onediffusion-worker" in of_kind(manifests, "ScaledObject")
    assert "onediffusion-api" in of_kind(manifests, "HorizontalPodAutoscaler")
    assert {"onediffusion-api", "onediffusion-worker"} <= set(of_kind(manifests, "PodDisruptionBudget"))


def test_k8s_deployment_args_are_cli_commands(manifests):
    for name, deployment in of_kind(manifests, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            args = container.get("args")
            assert args and len(args) == 1 and args[0] in ("serve", "worker", "webhooks"), (name, args)
            assert valid_command(args[0]), (name, args)
            assert "command" not in container, f"{name} overrides the image's ENTRYPOINT"


def test_k8s_worker_requests_a_gpu(manifests):
    worker = of_kind(manifests, "Deployment")["onediffusion-worker"]
    pod = worker["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["worker"]
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1, "a GPU is requested with limits"
    requested = container["resources"].get("requests", {}).get("nvidia.com/gpu")
    assert requested is None or requested == container["resources"]["limits"]["nvidia.com/gpu"]
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", []))
    assert pod.get("terminationGracePeriodSeconds", 30) >= 60, "a warm shutdown needs time to finish the batch"
    env = container_env(manifests, container)
    assert env["ONEDIFFUSION_MODEL"].startswith((S3_SCHEME, HUB_SCHEME)), "workers fetch the checkpoint (s3:// or hf://), no model volume"
    if env["ONEDIFFUSION_MODEL"].startswith("hf://"):
        HubLocation.parse(env["ONEDIFFUSION_MODEL"])
    else:
        S3Location.parse(env["ONEDIFFUSION_MODEL"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    (cache,) = [m for m in container["volumeMounts"] if m["mountPath"] == env["MODEL_CACHE_DIR"]]
    assert "hostPath" in volumes[cache["name"]], "the model cache is node-local (shared by the node's workers)"
    assert not cache.get("readOnly")
    for name in ("api", "webhooks"):
        other = of_kind(manifests, "Deployment")[f"onediffusion-{name}"]["spec"]["template"]["spec"]["containers"]
        assert all("nvidia.com/gpu" not in (c.get("resources", {}).get("limits") or {}) for c in other)


def test_k8s_api_probes_healthz(manifests):
    (container,) = of_kind(manifests, "Deployment")["onediffusion-api"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert 8000 in ports.values()
    for probe in ("readinessProbe", "livenessProbe"):
        port = container[probe]["httpGet"]["port"]
        assert ports.get(port, port) == 8000, f"the API's {probe} probes port {port}, the API listens on 8000"


def test_k8s_redis_persists(manifests):
    redis = of_kind(manifests, "StatefulSet")["redis"]
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    joined = " ".join(as_args(container.get("command", []) + container.get("args", [])))
    assert "--appendonly yes" in joined and "--appendfsync always" in joined, joined
    templates = {t["metadata"]["name"] for t in redis["spec"].get("volumeClaimTemplates", [])}
    assert any(m["name"] in templates and m["mountPath"] == "/data" for m in container["volumeMounts"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert "redis-cli" in container[probe]["exec"]["command"]


def test_k8s_env_names_and_values(manifests):
    for name, maps in of_kind(manifests, "ConfigMap").items():
        unknown = set(maps.get("data", {})) - SETTINGS_ENV - EXTRA_ENV
        assert not unknown, f"ConfigMap {name} sets variables the service does not read: {sorted(unknown)}"
    for name, deployment in of_kind(manifests, "Deployment").items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            env = container_env(manifests, container)
            unknown = set(env) - SETTINGS_ENV - EXTRA_ENV
            assert not unknown, f"{name} sets variables the service does not read: {sorted(unknown)}"
            settings = Settings.from_env({**dockerfile_env(), **env})
            assert settings.redis_url.startswith("redis://redis:"), f"{name} does not point at the redis Service"
            if env.get("WARM_BUCKETS"):
                assert re.fullmatch(r"\d+x\d+x\d+x\d+(,\d+x\d+x\d+x\d+)*", env["WARM_BUCKETS"]), env["WARM_BUCKETS"]


def test_k8s_references_resolve(manifests):
    maps = set(of_kind(manifests, "ConfigMap"))
    claims = set(of_kind(manifests, "PersistentVolumeClaim"))
    for name, workload in workloads(manifests).items():
        spec = workload["spec"]
        labels = spec["template"]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), f"{name}: selector does not match its pods"
        pod = spec["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        volumes.update({t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])})
        for volume in pod.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in maps, (name, source)
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)


def test_k8s_results_volume_is_shared(manifests):
    deployments = of_kind(manifests, "Deployment")
    for name in ("onediffusion-api", "onediffusion-worker"):
        pod = deployments[name]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        results_dir = container_env(manifests, container).get("RESULTS_DIR") or dockerfile_env()["RESULTS_DIR"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims.get(mounts.get(results_dir)) == "onediffusion-results", f"{name}: no results volume at {results_dir}"


def test_k8s_pods_run_as_the_image_user(manifests):
    for name, deployment in of_kind(manifests, "Deployment").items():
        context = deployment["spec"]["template"]["spec"].get("securityContext", {})
        assert context.get("runAsNonRoot") is True and context.get("runAsUser") == 10001, name


def test_k8s_services_select_pods(manifests):
    pods = [w["spec"]["template"] for w in workloads(manifests).values()]
    for name, service in of_kind(manifests, "Service").items():
        selector = service["spec"]["selector"]
        matching = [p for p in pods if selector.items() <= p["metadata"]["labels"].items()]
        assert matching, f"Service {name} selects no pod"
        ports = {}
        for pod in matching:
            for container in pod["spec"]["containers"]:
                for port in container.get("ports", []):
                    ports[port.get("name")] = port["containerPort"]
                    ports[port["containerPort"]] = port["containerPort"]
        for port in service["spec"]["ports"]:
            assert port.get("targetPort", port["port"]) in ports, (name, port)


# ---- object storage instead of the shared results volume ----------------------------------------------
def test_compose_minio_profile_is_optional_and_consistent(compose):
    services = compose["services"]
    assert services["minio"]["profiles"] == ["minio"] and services["minio-setup"]["profiles"] == ["minio"]
    for name in ("redis", *APP_SERVICES):
        assert "profiles" not in services[name], f"{name} must start without a profile"
    minio_env = compose_env(services["minio"])
    published = {str(p).split(":")[0] for p in services["minio"]["ports"]}
    setup = " ".join(as_args(services["minio-setup"]["entrypoint"]))
    bucket = re.search(r"mc mb \S* ?local/([a-z0-9.-]+)", setup).group(1)
    assert "ilm rule add --expire-days" in setup
    assert "minio-data" in compose["volumes"]
    for name in APP_SERVICES:
        env = compose_env(services[name])
        assert env["STORAGE_URL"] == "", f"{name}: the default must stay the results volume"
        assert env["AWS_ENDPOINT_URL_S3"] == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"])
        assert env["STORAGE_PUBLIC_ENDPOINT"].rsplit(":", 1)[1] in published, "presigned URLs must name a published port"
        settings = Settings.from_env({**dockerfile_env(), **env, "STORAGE_URL": f"s3://{bucket}/outputs"})
        assert settings.storage_url.startswith(f"s3://{bucket}/")
    assert f"STORAGE_URL=s3://{bucket}/" in COMPOSE.read_text(), "the header's example names the bucket minio-setup makes"


def _merge(base: dict, patch: dict) -> dict:
    """The strategic merge subset the overlay uses: maps merge, `containers` merge by name, `volumes` and
    `volumeMounts` items marked `$patch: delete` go (by name / mountPath), other lists are replaced."""
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out[key] = _merge(base[key], value)
        elif key in ("containers", "volumes", "volumeMounts") and isinstance(base.get(key), list):
            ident = "mountPath" if key == "volumeMounts" else "name"
            items = {item[ident]: item for item in base[key]}
            for item in value:
                if item.get("$patch") == "delete":
                    assert item[ident] in items, f"the overlay deletes {key} {item[ident]!r}, which the base lacks"
                    items.pop(item[ident])
                else:
                    assert item[ident] in items, f"the overlay patches {key} {item[ident]!r}, which the base lacks"
                    items[item[ident]] = _merge(items[item[ident]], item)
            out[key] = list(items.values())
        else:
            out[key] = value
    return out


@pytest.fixture(scope="module")
def object_storage_manifests(manifests) -> list[dict]:
    """The base manifests with the overlay's patches applied (what `kubectl apply -k` would create)."""
    (kustomization,) = load_all(OBJECT_STORAGE / "kustomization.yaml")
    assert kustomization["resources"] == [".."]
    by_id = {(doc["kind"], doc["metadata"]["name"]): doc for doc in manifests}
    for entry in kustomization["patches"]:
        for patch in load_all(OBJECT_STORAGE / entry["path"]):
            target = (patch["kind"], patch["metadata"]["name"])
            assert target in by_id, f"{entry['path']} patches {target}, which the base lacks"
            if patch.get("$patch") == "delete":
                by_id.pop(target)
            else:
                by_id[target] = _merge(by_id[target], patch)
    return list(by_id.values())


def test_k8s_object_storage_overlay_needs_no_results_volume(object_storage_manifests):
    assert "onediffusion-results" not in of_kind(object_storage_manifests, "PersistentVolumeClaim")
    maps = of_kind(object_storage_manifests, "ConfigMap")
    claims = set(of_kind(object_storage_manifests, "PersistentVolumeClaim"))
    for name, deployment in of_kind(object_storage_manifests, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, (name, volume)
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)
            env = {}
            for source in container["envFrom"]:
                if "configMapRef" in source:
                    env.update(maps[source["configMapRef"]["name"]]["data"])
                else:  # the credentials: optional, so IAM roles for service accounts work without it
                    assert source["secretRef"] == {"name": "onediffusion-s3", "optional": True}, (name, source)
            env.update({item["name"]: item.get("value", "") for item in container.get("env", [])})
            unknown = set(env) - SETTINGS_ENV - EXTRA_ENV
            assert not unknown, f"{name} sets variables the service does not read: {sorted(unknown)}"
            settings = Settings.from_env({**dockerfile_env(), **env})
            assert settings.storage_url and settings.storage_url.startswith("s3://"), name


def test_lifecycle_rule_expires_what_the_examples_store(object_storage_manifests):
    import json

    (rule,) = json.loads(LIFECYCLE.read_text())["Rules"]
    assert rule["Status"] == "Enabled"
    storage_url = of_kind(object_storage_manifests, "ConfigMap")["onediffusion-settings"]["data"]["STORAGE_URL"]
    from core.storage import parse_url

    _, prefix = parse_url(storage_url)
    assert rule["Filter"]["Prefix"] == prefix, "the rule must cover the overlay's STORAGE_URL prefix"
    assert rule["Expiration"]["Days"] * 86400 >= Settings().results_ttl_s, "outputs must outlive their job records"
# ---- deploy/k8s: schemas, probes, autoscaling, disruption budgets ---------------------------------------
# Kubernetes releases the manifests are checked against: an older one still widely run, and the newest the
# installed kubernetes-validate knows.
K8S_VERSIONS = ("1.29",)


def builtin(doc: dict) -> bool:
    return "." not in doc["apiVersion"].split("/")[0] or doc["apiVersion"].split("/")[0].endswith(".k8s.io")


def test_k8s_manifests_validate_against_kubernetes_schemas(manifests):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = set()
    for doc in manifests:
        if not builtin(doc):
            continue
        body = {k: v for k, v in doc.items() if k != "_file"}
        for version in (*K8S_VERSIONS, kubernetes_validate.latest_version()):
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['_file']} {doc['kind']}/{doc['metadata']['name']} (Kubernetes {version}): {exc.message} "
                            f"at {'.'.join(map(str, exc.path))}")
        checked.add(doc["kind"])
    assert {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= checked


def test_kubernetes_validate_rejects_an_unknown_field():
    """--strict catches a misspelt field (the check above can fail)."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "x"},
           "spec": {"maxUnavailabel": 1}}
    with pytest.raises(kubernetes_validate.ValidationError, match="maxUnavailabel"):
        kubernetes_validate.validate(pdb, K8S_VERSIONS[0], strict=True)


def probe_port(container: dict, probe: dict) -> int:
    port = probe["httpGet"]["port"]
    named = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
    return named.get(port, port)


def test_k8s_worker_probes_are_the_ones_the_worker_serves(manifests):
    from worker.probes import WorkerHealth, serve_probes

    worker = of_kind(manifests, "Deployment")["onediffusion-worker"]
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    env = container_env(manifests, container)
    settings = Settings.from_env({**dockerfile_env(), **env})
    assert settings.worker_probe_port, "the worker serves no probes unless WORKER_PROBE_PORT is set"
    assert settings.host == "0.0.0.0", "the kubelet reaches the probe port on the pod's address"
    probes = {name: container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    for name, probe in probes.items():
        assert probe_port(container, probe) == settings.worker_probe_port, name
    assert probes["startupProbe"]["httpGet"]["path"] == probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60, "fetch + load + compile needs time"

    # The paths answer on a real probe server: 503 while loading, 200 once ready.
    from tests.service.harness import free_port

    import httpx

    health, port = WorkerHealth(), free_port()
    server = serve_probes("127.0.0.1", port, health)
    try:
        paths = {p["httpGet"]["path"] for p in probes.values()}
        assert {path: httpx.get(f"http://127.0.0.1:{port}{path}").status_code for path in paths} == {"/readyz": 503, "/livez": 200}
        health.loaded()
        health.working()
        assert all(httpx.get(f"http://127.0.0.1:{port}{path}").status_code == 200 for path in paths)
    finally:
        server.shutdown()


def test_k8s_rolling_updates_wait_for_readiness(manifests):
    for name in ("onediffusion-api", "onediffusion-worker"):
        deployment = of_kind(manifests, "Deployment")[name]
        strategy = deployment["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate"
        rolling = strategy["rollingUpdate"]
        assert int(rolling["maxUnavailable"]) == 0 and int(rolling["maxSurge"]) == 1, (name, rolling)
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert "readinessProbe" in container, f"{name}: without readiness a rollout does not wait for anything"
    worker = of_kind(manifests, "Deployment")["onediffusion-worker"]["spec"]
    assert worker["progressDeadlineSeconds"] >= 1800, "a new worker's first start (fetch, load, compile) is long"


def test_k8s_model_cache_is_writable_by_the_worker(manifests):
    pod = of_kind(manifests, "Deployment")["onediffusion-worker"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    cache_dir = container_env(manifests, container)["MODEL_CACHE_DIR"]
    (volume_name,) = [m["name"] for m in container["volumeMounts"] if m["mountPath"] == cache_dir]
    (init,) = [c for c in pod.get("initContainers", []) if any(m["name"] == volume_name for m in c["volumeMounts"])]
    uid = pod["securityContext"]["runAsUser"]
    assert f"chown {uid}:" in " ".join(init["command"]), "a hostPath folder is created root-owned"
    assert init["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}


def test_k8s_autoscaled_deployments_leave_replicas_to_the_autoscaler(manifests):
    deployments = of_kind(manifests, "Deployment")
    hpa = of_kind(manifests, "HorizontalPodAutoscaler")["onediffusion-api"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "onediffusion-api"}
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (api,) = deployments["onediffusion-api"]["spec"]["template"]["spec"]["containers"]
    assert api["resources"]["requests"]["cpu"], "CPU utilization is measured against the request"
    scaled = of_kind(manifests, "ScaledObject")["onediffusion-worker"]["spec"]
    assert scaled["scaleTargetRef"]["name"] in deployments
    for name in ("onediffusion-api", scaled["scaleTargetRef"]["name"]):
        assert "replicas" not in deployments[name]["spec"], f"{name}: `kubectl apply` would reset the autoscaler's count"


def test_k8s_disruption_budgets_select_pods(manifests):
    pods = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(manifests).values()]
    budgets = of_kind(manifests, "PodDisruptionBudget")
    for name, budget in budgets.items():
        selector = budget["spec"]["selector"]["matchLabels"]
        assert any(selector.items() <= labels.items() for labels in pods), f"PodDisruptionBudget {name} selects no pod"
        assert ("minAvailable" in budget["spec"]) != ("maxUnavailable" in budget["spec"]), name
    worker = budgets["onediffusion-worker"]["spec"]
    assert worker.get("maxUnavailable") == 1, "minAvailable would block every drain when the workers scale to zero"


# KEDA's ScaledObject (keda.sh/v1alpha1) as its specification documents it (keda.sh/docs, "ScaledObject
# specification" and the "Redis Lists" scaler): the fields and their types, nothing else allowed.
_INT = {"type": "integer", "minimum": 0}
_HPA_BEHAVIOR = {"type": "object"}  # checked with Kubernetes' own HPA schema below
KEDA_SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "additionalProperties": False, "required": ["name"],
                    "properties": {k: {"type": "string"} for k in ("apiVersion", "kind", "name", "envSourceContainerName")},
                },
                **{k: _INT for k in ("pollingInterval", "cooldownPeriod", "initialCooldownPeriod", "idleReplicaCount",
                                     "minReplicaCount", "maxReplicaCount")},
                "fallback": {
                    "type": "object", "additionalProperties": False, "required": ["failureThreshold", "replicas"],
                    "properties": {"failureThreshold": _INT, "replicas": _INT, "behavior": {"type": "string"}},
                },
                "advanced": {
                    "type": "object", "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object", "additionalProperties": False,
                            "properties": {"name": {"type": "string"}, "behavior": _HPA_BEHAVIOR},
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            "authenticationRef": {"type": "object", "required": ["name"]},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}
KEDA_REDIS_PARAMETERS = {"address", "host", "port", "usernameFromEnv", "passwordFromEnv", "listName", "listLength",
                         "activationListLength", "enableTLS", "unsafeSsl", "databaseIndex", "addressFromEnv",
                         "hostFromEnv", "portFromEnv"}


def test_k8s_scaled_object_follows_kedas_spec(manifests):
    jsonschema = pytest.importorskip("jsonschema")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    scaled = of_kind(manifests, "ScaledObject")["onediffusion-worker"]
    body = {k: v for k, v in scaled.items() if k != "_file"}
    jsonschema.validate(body, KEDA_SCALED_OBJECT)
    spec = scaled["spec"]
    assert 0 <= spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
    # The HPA behavior KEDA passes on is Kubernetes' own type: check it with Kubernetes' schema.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "check"},
           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 1, "behavior": behavior}}
    kubernetes_validate.validate(hpa, K8S_VERSIONS[0], strict=True)


def test_k8s_scaled_object_reads_the_queue_the_workers_take_from(manifests):
    from rq import Queue

    from core.connection import Keys

    (trigger,) = of_kind(manifests, "ScaledObject")["onediffusion-worker"]["spec"]["triggers"]
    assert trigger["type"] == "redis"
    metadata = trigger["metadata"]
    assert set(metadata) <= KEDA_REDIS_PARAMETERS, sorted(set(metadata) - KEDA_REDIS_PARAMETERS)
    assert int(metadata["listLength"]) >= 1 and int(metadata.get("activationListLength", "0")) >= 0
    (worker,) = of_kind(manifests, "Deployment")["onediffusion-worker"]["spec"]["template"]["spec"]["containers"]
    settings = Settings.from_env({**dockerfile_env(), **container_env(manifests, worker)})
    queue_name = Keys(settings.queue_prefix).inference_queue
    assert metadata["listName"] == Queue.redis_queue_namespace_prefix + queue_name, "not the workers' queue"
    # The same Redis (host, port, database) as the workers' REDIS_URL.
    from urllib.parse import urlsplit

    url = urlsplit(settings.redis_url)
    host, port = metadata["address"].rsplit(":", 1)
    service = host.split(".")[0]
    assert service == url.hostname and service in of_kind(manifests, "Service"), (host, url.hostname)
    assert host in (service, f"{service}.{NAMESPACE}", f"{service}.{NAMESPACE}.svc", f"{service}.{NAMESPACE}.svc.cluster.local")
    assert int(port) == (url.port or 6379)
    assert int(metadata.get("databaseIndex", "0")) == int((url.path or "/0").lstrip("/") or 0)
