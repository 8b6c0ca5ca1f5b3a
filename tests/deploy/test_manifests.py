"""Render the kustomize base and every overlay, and the Helm chart; validate every object."""

from __future__ import annotations

import copy
import re

import pytest
import yaml

from tests.deploy.conftest import (
    HELM_BASE_VALUES,
    KUSTOMIZATIONS,
    OVERLAYS,
    by_kind,
    comparable,
    containers,
    deep_merge,
    env_values,
    helm_lint,
    helm_render,
    helm_render_raw,
    helm_values_for,
    one,
    render_kustomize,
    validate,
)

EXPECTED_KINDS = {
    "base": {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"},
    "cpu": {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"},
    "gpu": {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"},
    "multinode": {"LeaderWorkerSet", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"},
    "keda": {"Deployment", "Service", "PodDisruptionBudget", "ScaledObject", "ServiceMonitor"},
}


def test_every_kustomization_is_covered():
    assert set(EXPECTED_KINDS) == set(KUSTOMIZATIONS)


def test_kustomization_renders_the_expected_objects(kustomization):
    objs = render_kustomize(kustomization)
    kinds = by_kind(objs)
    assert set(kinds) == EXPECTED_KINDS[kustomization]
    assert all(len(items) == 1 for items in kinds.values()), {k: len(v) for k, v in kinds.items()}
    assert {obj["metadata"]["name"] for obj in objs} == {"tgi-py"}


def test_kustomization_objects_match_their_schemas(kustomization):
    for obj in render_kustomize(kustomization):
        validate(obj)


def test_images_are_set_by_the_images_transformer(kustomization):
    # A bare "tgi-py" would mean an `images:` entry missed a resource (e.g. a custom resource).
    images = {container["image"] for _, _, container in containers(render_kustomize(kustomization))}
    expected = "tgi-py:0.1.0-cuda" if kustomization == "gpu" else "tgi-py:0.1.0"
    assert images == {expected}


def test_strict_validation_rejects_an_unknown_field():
    # A negative control: the validator really reads the objects.
    deployment = copy.deepcopy(one(render_kustomize("base"), "Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["livenesProbe"] = container.pop("livenessProbe")
    with pytest.raises(Exception, match="livenesProbe"):
        validate(deployment)


@pytest.mark.parametrize("kind", ["ServiceMonitor", "LeaderWorkerSet"])
def test_custom_schemas_reject_an_unknown_field(kind):
    source = "multinode"
    obj = copy.deepcopy(one(render_kustomize(source), kind))
    obj["spec"]["bogusField"] = 1
    with pytest.raises(Exception, match="bogusField"):
        validate(obj)


def test_lws_pod_templates_are_checked_against_the_core_schema():
    lws = copy.deepcopy(one(render_kustomize("multinode"), "LeaderWorkerSet"))
    lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["imagePullPolicy"] = 3
    with pytest.raises(Exception, match="imagePullPolicy|3"):
        validate(lws)


# ---- Helm -------------------------------------------------------------------------------------------

def test_helm_lint_strict_is_clean():
    report = helm_lint()
    assert not report.get("errors"), report
    # Severity: 1 info, 2 warning, 3 error; strict lint treats warnings as errors.
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


@pytest.mark.parametrize("name", list(KUSTOMIZATIONS))
def test_helm_lint_is_clean_with_each_ci_values_file(name):
    report = helm_lint(helm_values_for(name))
    assert not report.get("errors"), report
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report


def test_helm_chart_renders_what_its_kustomize_equivalent_renders(kustomization):
    helm_objs = helm_render(helm_values_for(kustomization))
    kustomize_objs = render_kustomize(kustomization)
    for obj in helm_objs:
        validate(obj)
    helm_view = {(o["kind"], o["metadata"]["name"]): comparable(o) for o in helm_objs}
    kustomize_view = {(o["kind"], o["metadata"]["name"]): comparable(o) for o in kustomize_objs}
    assert set(helm_view) == set(kustomize_view)
    if kustomization == "keda":
        # Helm knows the release namespace and adds it to the query; kustomize cannot.
        for view in (helm_view, kustomize_view):
            trigger = view[("ScaledObject", "tgi-py")]["spec"]["triggers"][0]["metadata"]
            query = trigger.pop("query")
            assert query.startswith("sum(tgi_queue_size{") and 'service="tgi-py"' in query, query
    for key in kustomize_view:
        assert helm_view[key] == kustomize_view[key], key


def test_helm_chart_defaults_leave_the_service_monitor_off():
    kinds = by_kind(helm_render({}))
    assert "ServiceMonitor" not in kinds
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} <= set(kinds)


def test_helm_optional_settings_render_valid_objects():
    values = deep_merge(HELM_BASE_VALUES, {
        "model": {"id": "/data/my-model", "revision": "main", "persistentVolumeClaim": "models"},
        "apiKey": {"existingSecret": "tgi-py-api-key"},
        "server": {"extraEnv": [{"name": "MAX_INPUT_TOKENS", "value": "2048"}], "extraArgs": ["--trust-remote-code"]},
        "autoscaling": {"enabled": False},
        "replicaCount": 3,
        "imagePullSecrets": [{"name": "registry"}],
        "nodeSelector": {"kubernetes.io/arch": "amd64"},
        "podAnnotations": {"example.com/note": "x"},
        "metrics": {"serviceMonitor": {"authorization": {"credentials": {"name": "tgi-py-api-key",
                                                                         "key": "api-key"}}}},
    })
    objs = helm_render(values, name="prod", namespace="llm")
    for obj in objs:
        validate(obj)
    deployment = one(objs, "Deployment")
    assert deployment["metadata"]["name"] == "prod-tgi-py"
    assert deployment["spec"]["replicas"] == 3
    assert "HorizontalPodAutoscaler" not in by_kind(objs)
    (_, spec, container), = containers(objs)
    env = env_values(container)
    assert env["MODEL_ID"] == "/data/my-model" and env["MAX_INPUT_TOKENS"] == "2048"
    assert {"name": "model", "mountPath": "/data", "readOnly": True} in container["volumeMounts"]
    assert any(v["name"] == "model" and v["persistentVolumeClaim"]["claimName"] == "models"
               for v in spec["volumes"])
    assert container["args"][-1] == "--trust-remote-code"


def test_helm_refuses_a_grace_period_shorter_than_the_drain():
    answer = helm_render_raw({"lifecycle": {"terminationGracePeriodSeconds": 60}})
    assert "terminationGracePeriodSeconds" in answer.get("error", ""), answer


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_change_only_what_they_mean_to(overlay):
    # The pod spec of each overlay keeps the base's probes, security and volumes layout.
    (_, base_spec, base_container), = containers(render_kustomize("base"))
    for role, spec, container in containers(render_kustomize(overlay)):
        assert container["securityContext"] == base_container["securityContext"]
        assert spec["securityContext"] == base_spec["securityContext"]
        assert {v["name"] for v in spec["volumes"]} == {v["name"] for v in base_spec["volumes"]}
        assert container["volumeMounts"] == base_container["volumeMounts"]
        if role != "worker":
            for probe in ("readinessProbe", "livenessProbe"):
                assert container[probe] == base_container[probe]
            assert container["startupProbe"]["httpGet"] == base_container["startupProbe"]["httpGet"]
            assert container["lifecycle"] == base_container["lifecycle"]


def test_schema_versions_start_at_the_charts_kubernetes_floor():
    from tests.deploy.conftest import CHART, KUBE_VERSIONS

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    floor = re.fullmatch(r">=(\d+\.\d+)\.0-0", chart["kubeVersion"])
    assert floor and floor.group(1) == KUBE_VERSIONS[0]
