"""deploy/k8s: every overlay renders (kubectl kustomize when present, else deploy.kustomize, and both agree),
validates with kubernetes-validate --strict against Kubernetes 1.29 and the newest shipped schemas, and holds
the properties issue 8 asks for (hardening, gRPC probes, threads from the CPU limit, headless Services, ...).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from deploy.kustomize import UnsupportedKustomization, json_patch, render
from services.common.config import EncoderConfig, PerturbConfig

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
TARGETS = {"cpu": K8S / "overlays" / "cpu", "gpu": K8S / "overlays" / "gpu", "training": K8S / "training"}
KUBE_VERSIONS = ("1.29.0", latest_version())
KUBECTL = shutil.which("kubectl")
CRD_KINDS = {"PyTorchJob"}  # no schema in kubernetes-validate: checked structurally below


@cache
def manifests(target: str) -> tuple:
    """The rendered manifests of one target, as canonical JSON strings (cached; parse with json.loads)."""
    docs = render(TARGETS[target])
    return tuple(sorted(json.dumps(d, sort_keys=True) for d in docs))


def docs(target: str, kind: str | None = None) -> list[dict]:
    """Rendered manifests of ``target``, optionally only one kind."""
    return [d for d in map(json.loads, manifests(target)) if kind is None or d["kind"] == kind]


def by_name(target: str, kind: str) -> dict[str, dict]:
    """{metadata.name: manifest} for one kind."""
    return {d["metadata"]["name"]: d for d in docs(target, kind)}


def pod_specs(target: str) -> list[tuple[str, dict]]:
    """(owner name, pod spec) for every Deployment, Job and PyTorchJob replica."""
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"])
             for d in docs(target) if d["kind"] in ("Deployment", "Job")]
    for job in docs(target, "PyTorchJob"):
        specs += [(f"{job['metadata']['name']}/{role}", spec["template"]["spec"])
                  for role, spec in job["spec"]["pytorchReplicaSpecs"].items()]
    return specs


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: deploy.kustomize renders alone")
@pytest.mark.parametrize("target", TARGETS)
def test_renderer_matches_kubectl_kustomize(target):
    out = subprocess.run([KUBECTL, "kustomize", str(TARGETS[target])], capture_output=True, text=True,
                         check=True, timeout=60).stdout
    theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(out) if d)
    assert theirs == list(manifests(target))


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: nothing to compare with")
def test_renderer_matches_kubectl_on_a_second_namespace(tmp_path):
    """A blue/green copy in another namespace (deploy/README.md) renders the same both ways."""
    overlay = tmp_path / "v2"
    overlay.mkdir()
    base = os.path.relpath(TARGETS["cpu"], overlay)
    (overlay / "kustomization.yaml").write_text(f"resources: [{base}]\nnamespace: reaas-v2\n")
    out = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True, check=True,
                         timeout=60).stdout
    theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(out) if d)
    mine = render(overlay)
    assert theirs == sorted(json.dumps(d, sort_keys=True) for d in mine)
    assert {d["metadata"].get("namespace", d["metadata"]["name"]) for d in mine} == {"reaas-v2"}


@pytest.mark.parametrize("target", TARGETS)
def test_every_manifest_validates_strict(target):
    kinds = set()
    for manifest in docs(target):
        kinds.add(manifest["kind"])
        if manifest["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)  # raises ValidationError
    expected = ({"PersistentVolumeClaim", "NetworkPolicy", "Job", "PyTorchJob"} if target == "training" else
                {"Namespace", "ServiceAccount", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment",
                 "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"})
    assert kinds == expected


def test_pytorchjob_structure():
    (job,) = docs("training", "PyTorchJob")
    assert job["apiVersion"] == "kubeflow.org/v1" and job["metadata"]["namespace"] == "reaas"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1
    assert replicas["Worker"]["replicas"] >= 1
    for spec in replicas.values():
        assert spec["restartPolicy"] in ("OnFailure", "Never", "ExitCode", "Always")
        (container,) = spec["template"]["spec"]["containers"]
        assert container["name"] == "pytorch"  # the training-operator finds the container by this name
        assert container["command"][:3] == ["torchrun", "-m", "services.trainer"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        # Each pod spec is a plain PodSpec: validate it through a Pod wrapper.
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}, "spec": spec["template"]["spec"]}
        kubernetes_validate.validate(pod, KUBE_VERSIONS[0], strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_pods_are_hardened(target):
    for owner, spec in pod_specs(target):
        assert spec["automountServiceAccountToken"] is False, owner
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] > 0, owner
        assert pod_security["seccompProfile"]["type"] == "RuntimeDefault", owner
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, owner
            assert security["readOnlyRootFilesystem"] is True, owner
            assert security["capabilities"]["drop"] == ["ALL"], owner
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), owner
            assert any(m["mountPath"] == "/tmp" for m in container["volumeMounts"]), owner
    for account in docs(target, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_servers_probe_grpc_health_and_size_processes_and_threads_to_the_cpu_limit(target):
    health = {"reaas-encoder": "reaas.v1.Encoder", "reaas-perturb": "reaas.v1.Perturb"}
    deployments = by_name(target, "Deployment")
    assert set(deployments) == set(health)
    for name, deployment in deployments.items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        env = {e["name"]: e for e in container["env"]}
        assert env["REAAS_PORT"]["value"] == str(port)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == port, (name, probe)
        assert container["readinessProbe"]["grpc"]["service"] == health[name]
        limit = {"containerName": container["name"], "resource": "limits.cpu", "divisor": "1"}
        if name == "reaas-encoder":  # one worker process per CPU, each CPUs / workers threads
            assert env["REAAS_WORKERS"]["valueFrom"]["resourceFieldRef"] == limit
            assert env["REAAS_INTRA_OP_THREADS"]["value"] == "0"
            metrics = [p["containerPort"] for p in container["ports"] if p["name"].startswith("metrics")]
            assert metrics == [9090, 9091]  # worker i on 9090 + i, for the 2-CPU limit
        else:
            assert env["REAAS_INTRA_OP_THREADS"]["valueFrom"]["resourceFieldRef"] == limit
        strategy = deployment["spec"]["strategy"]["rollingUpdate"]
        assert strategy["maxUnavailable"] == 0
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        config = by_name(target, "ConfigMap")["reaas-config"]["data"]
        assert grace > float(config["REAAS_GRACE_S"]) + float(config["REAAS_DRAIN_DELAY_S"])


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_services_hpa_pdb_and_network_policy_select_the_server_pods(target):
    deployments = by_name(target, "Deployment")
    pod_labels = {n: d["spec"]["template"]["metadata"]["labels"] for n, d in deployments.items()}
    for name, labels in pod_labels.items():
        assert deployments[name]["spec"]["selector"]["matchLabels"].items() <= labels.items()
        service = by_name(target, "Service")[name]
        assert service["spec"]["clusterIP"] == "None", "headless: clients balance per call with round_robin"
        assert service["spec"]["selector"].items() <= labels.items()
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container["ports"]}
        hpa = by_name(target, "HorizontalPodAutoscaler")[name]
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["spec"]["minReplicas"] >= 2
        pdb = by_name(target, "PodDisruptionBudget")[name]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "leave room to drain a node"
    policies = by_name(target, "NetworkPolicy")
    assert policies["reaas-default-deny"]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    selector = policies["reaas-servers"]["spec"]["podSelector"]["matchExpressions"][0]
    assert {labels[selector["key"]] for labels in pod_labels.values()} <= set(selector["values"])


def test_references_resolve():
    available = {(d["kind"], d["metadata"]["name"]) for t in ("cpu", "training") for d in docs(t)}
    for target in TARGETS:
        for owner, spec in pod_specs(target):
            if "serviceAccountName" in spec:
                assert ("ServiceAccount", spec["serviceAccountName"]) in available, owner
            for volume in spec["volumes"]:
                if "persistentVolumeClaim" in volume:
                    claim = volume["persistentVolumeClaim"]["claimName"]
                    assert ("PersistentVolumeClaim", claim) in available, owner
                if "secret" in volume:
                    assert ("Secret", volume["secret"]["secretName"]) in available, owner
            for container in spec["containers"]:
                mounts = {m["name"] for m in container.get("volumeMounts", [])}
                assert mounts <= {v["name"] for v in spec["volumes"]}, owner
                for source in container.get("envFrom", []):
                    assert ("ConfigMap", source["configMapRef"]["name"]) in available, owner


def _env_vars(config_class) -> set[str]:
    return {f.metadata["env"] for f in dataclasses.fields(config_class)}


def test_every_reaas_setting_is_a_real_flag():
    # REAAS_MODEL_SHA256 is read by deploy.model_check, the rest by the services' config.
    known = _env_vars(EncoderConfig) | _env_vars(PerturbConfig) | {"REAAS_MODEL_SHA256"}
    config = by_name("cpu", "ConfigMap")["reaas-config"]["data"]
    names = set(config)
    for target in ("cpu", "gpu"):
        for _, spec in pod_specs(target):
            env = [e["name"] for c in spec["containers"] for e in c["env"]]
            names |= {name for name in env if name.startswith("REAAS_")}
    assert names - known == set()
    secret = by_name("cpu", "Secret")["reaas-api-keys"]
    key_file = Path(config["REAAS_API_KEY_FILE"])
    assert key_file.name in secret["stringData"]


def test_gpu_overlay_puts_only_the_encoder_on_gpus():
    for target, gpu in (("cpu", False), ("gpu", True)):
        deployments = by_name(target, "Deployment")
        encoder = deployments["reaas-encoder"]["spec"]["template"]["spec"]
        assert ("nvidia.com/gpu" in encoder["containers"][0]["resources"]["limits"]) is gpu
        assert (encoder.get("nodeSelector", {}).get("nvidia.com/gpu.present") == "true") is gpu
        assert any(t["key"] == "nvidia.com/gpu" for t in encoder.get("tolerations", [])) is gpu
        assert encoder["containers"][0]["image"].endswith("-gpu" if gpu else "-cpu")
        perturb = deployments["reaas-perturb"]["spec"]["template"]["spec"]
        assert "nvidia.com/gpu" not in perturb["containers"][0]["resources"]["limits"]
        assert perturb["containers"][0]["image"].endswith("-cpu")


def test_trainer_job_runs_torchrun_then_the_pixel_view_into_the_models_volume():
    (job,) = docs("training", "Job")
    spec = job["spec"]["template"]["spec"]
    (trainer,) = spec["initContainers"]
    assert trainer["command"][0] == "torchrun" and trainer["command"][-2:] == ["-m", "services.trainer"]
    nproc = next(int(a.split("=")[1]) for a in trainer["command"] if a.startswith("--nproc_per_node="))
    threads = next(int(a.split("=")[1]) for a in trainer["args"] if a.startswith("--threads="))
    assert nproc * threads <= float(trainer["resources"]["limits"]["cpu"])
    base = next(a.split("=", 1)[1] for a in trainer["args"] if a.startswith("--export="))
    (view,) = spec["containers"]
    script = view["args"][0].split()
    assert script[:3] == ["python", "-m", "services.trainer.pixel_view"]
    assert script[script.index("--base") + 1] == base  # the view extends what the trainer exported
    export = script[script.index("--export") + 1]
    models_mount = next(m for m in view["volumeMounts"] if m["name"] == "models")["mountPath"]
    assert export.startswith(models_mount + "/")
    serving_model = by_name("cpu", "ConfigMap")["reaas-config"]["data"]["REAAS_MODEL"]
    assert serving_model == export
    for container in spec["initContainers"]:  # hardened like the main containers (test_pods_are_hardened)
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_renderer_rejects_what_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: [a.yaml]\ncommonLabels: {a: b}\n")
    (tmp_path / "a.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n")
    with pytest.raises(UnsupportedKustomization, match="commonLabels"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [a.yaml]\npatches:\n- target: {kind: ConfigMap, name: a}\n  patch: 'data: {x: y}'\n")
    with pytest.raises(UnsupportedKustomization, match="6902"):
        render(tmp_path)


def test_json_patch_operations():
    doc = {"a": {"list": [1, 2], "x/y": 0}}
    json_patch(doc, {"op": "add", "path": "/a/list/-", "value": 3})
    json_patch(doc, {"op": "add", "path": "/a/list/0", "value": 0})
    json_patch(doc, {"op": "replace", "path": "/a/x~1y", "value": 5})
    json_patch(doc, {"op": "add", "path": "/a/new", "value": {"k": 1}})
    json_patch(doc, {"op": "remove", "path": "/a/list/1"})
    assert doc == {"a": {"list": [0, 2, 3], "x/y": 5, "new": {"k": 1}}}
    with pytest.raises(KeyError):
        json_patch(doc, {"op": "replace", "path": "/a/missing", "value": 1})
