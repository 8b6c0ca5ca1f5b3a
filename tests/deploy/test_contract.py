"""The manifests against the server they deploy: metric names, routes, ports, flags, drain timing."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from launcher import cli as launcher_cli
from tests.deploy import dockerfile as df
from tests.deploy.conftest import (
    K8S,
    KUSTOMIZATIONS,
    REPO,
    containers,
    env_of,
    env_values,
    helm_render,
    helm_values_for,
    one,
    render_kustomize,
)

# Variables the manifests set that are not tgi-launch flags, and who reads them.
NON_FLAG_ENV = {
    "TGI_PY_CACHE": "launcher.model_source: where the embedded model is converted (baked into the image)",
    "HF_HOME": "huggingface_hub / transformers caches",
    "OMP_NUM_THREADS": "torch's thread pool in each shard",
}
# What kubelet substitutes for $(VAR) at run time, for parsing the templates' values.
LWS_RUNTIME = {"LWS_LEADER_ADDRESS": "tgi-py-0.tgi-py.default", "LWS_GROUP_SIZE": "2", "LWS_WORKER_INDEX": "1"}


def all_renderings():
    """(label, objects) for every kustomization and its Helm equivalent."""
    for name in KUSTOMIZATIONS:
        yield f"kustomize:{name}", render_kustomize(name)
        yield f"helm:{name}", helm_render(helm_values_for(name))


@pytest.fixture(scope="module")
def renderings():
    return list(all_renderings())


def exported_metrics() -> dict[str, str]:
    """name -> type of every metric the router exposes on /metrics."""
    from router.metrics import Metrics

    text = Metrics().render().decode()
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M))


def served_get_paths() -> set[str]:
    """GET routes the router registers (read from the source: building the app needs a live batcher)."""
    paths: set[str] = set()
    for source in (REPO / "router").glob("*.py"):
        paths |= set(re.findall(r"""web\.get\(\s*["']([^"']+)["']""", source.read_text()))
    return paths


def launcher_envvars() -> dict[str, click.Option]:
    return {param.envvar: param for param in launcher_cli.main.params
            if isinstance(param, click.Option) and isinstance(param.envvar, str)}


def image_entrypoint_args() -> list[str]:
    """What the image's ENTRYPOINT passes to tgi-launch before the container's args."""
    (entrypoint,) = df.stages(df.read_instructions(REPO / "Dockerfile"))[-1].all("ENTRYPOINT")
    command = entrypoint.exec_form()
    assert command is not None and command[0] == "tgi-launch"
    return command[1:]


def parse_launcher(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict:
    """The settings tgi-launch would run with, given its arguments and environment."""
    for name in launcher_envvars():
        monkeypatch.delenv(name, raising=False)
    # Kubernetes sets HOSTNAME to the pod name; --hostname on the command line must win over it.
    monkeypatch.setenv("HOSTNAME", "tgi-py-7d9f8-abcde")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    ctx = launcher_cli.main.make_context("tgi-launch", list(args), resilient_parsing=False)
    return ctx.params


def substitute(value: str) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: LWS_RUNTIME[m.group(1)], value)


# ---- metrics ----------------------------------------------------------------------------------------

def test_hpa_metric_is_a_gauge_the_router_exports(renderings):
    metrics = exported_metrics()
    for label, objs in renderings:
        for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
            for metric in hpa["spec"]["metrics"]:
                assert metric["type"] == "Pods", label
                name = metric["pods"]["metric"]["name"]
                assert metrics.get(name) == "gauge", (label, name)


def test_keda_query_uses_exported_metrics(renderings):
    metrics = exported_metrics()
    for label, objs in renderings:
        for scaled in (o for o in objs if o["kind"] == "ScaledObject"):
            for trigger in scaled["spec"]["triggers"]:
                names = re.findall(r"\b(tgi_[a-z_]+)\b", trigger["metadata"]["query"])
                assert names and all(metrics.get(n) == "gauge" for n in names), (label, names)


def test_prometheus_adapter_rule_publishes_the_hpa_metric():
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    metrics = exported_metrics()
    hpa_metric = one(render_kustomize("base"), "HorizontalPodAutoscaler")["spec"]["metrics"][0]["pods"]["metric"]
    published = {}
    for rule in values["rules"]["custom"]:
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
        assert metrics.get(series) == "gauge", series
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        published[rule["name"]["as"]] = series
    assert published.get(hpa_metric["name"]) == "tgi_queue_size"


def test_service_monitor_scrapes_the_metrics_route_on_the_service_port(renderings):
    for label, objs in renderings:
        monitors = [o for o in objs if o["kind"] == "ServiceMonitor"]
        if not monitors:
            continue
        service = one(objs, "Service")
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        (monitor,) = monitors
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items(), label
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports, label
            assert endpoint["path"] in served_get_paths(), label


# ---- routes, ports -----------------------------------------------------------------------------------

def test_probes_use_routes_the_router_serves(renderings):
    paths = served_get_paths()
    assert "/health" in paths
    for label, objs in renderings:
        for role, _, container in containers(objs):
            if role == "worker":
                assert not any(p in container for p in ("startupProbe", "readinessProbe", "livenessProbe"))
                continue
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert container[probe]["httpGet"]["path"] in paths, (label, probe)
                assert container[probe]["httpGet"]["port"] == "http", (label, probe)
            # Readiness must be the route that turns 503 while draining, so a draining pod leaves the Service.
            assert container["readinessProbe"]["httpGet"]["path"] == "/health", label
            assert container["startupProbe"]["httpGet"]["path"] == "/health", label
            # /health answers only after a shard health call with a 5 s timeout.
            assert container["readinessProbe"]["timeoutSeconds"] > 5, label


def test_probe_paths_stay_open_when_an_api_key_is_set(renderings):
    middleware = REPO / "router" / "middleware.py"
    if not middleware.exists():
        pytest.skip("the router has no API-key middleware")
    match = re.search(r"OPEN_PATHS\s*=\s*frozenset\(\{([^}]*)\}\)", middleware.read_text())
    assert match, "router/middleware.py no longer defines OPEN_PATHS as this test reads it"
    open_paths = set(re.findall(r"""["']([^"']+)["']""", match.group(1)))
    for label, objs in renderings:
        for role, _, container in containers(objs):
            if role != "worker":
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    assert container[probe]["httpGet"]["path"] in open_paths, (label, probe)


def test_ports_agree_from_launcher_to_service(renderings):
    default_port = next(p.default for p in launcher_cli.main.params if p.name == "port")
    for label, objs in renderings:
        service = one(objs, "Service")
        (service_port,) = service["spec"]["ports"]
        assert service_port["targetPort"] == "http", label
        for role, _, container in containers(objs):
            port = int(env_values(container)["PORT"])
            assert port == default_port == 3000, label
            if role != "worker":
                http = {p["name"]: p["containerPort"] for p in container["ports"]}
                assert http["http"] == port, label


# ---- flags and environment ------------------------------------------------------------------------

def test_every_env_var_is_a_launcher_flag_or_documented(renderings):
    flags = launcher_envvars()
    for label, objs in renderings:
        for _, _, container in containers(objs):
            for name in env_of(container):
                assert name in flags or name in NON_FLAG_ENV, f"{label}: {name} is neither a tgi-launch flag " \
                                                              f"nor in NON_FLAG_ENV"


def test_launcher_accepts_each_containers_args_and_env(renderings, monkeypatch):
    for label, objs in renderings:
        for role, _, container in containers(objs):
            args = [substitute(a) for a in container.get("args", [])]
            env = {name: substitute(value) for name, value in env_values(container).items()}
            with monkeypatch.context() as patch:
                params = parse_launcher(image_entrypoint_args() + args, env, patch)
            assert params["hostname"] == "0.0.0.0", (label, role)
            assert params["port"] == 3000
            assert params["json_output"] is True
            assert params["num_shard"] == int(env["NUM_SHARD"])
            assert params["graceful_termination_timeout"] == 90.0
            assert params["shard_uds_path"].startswith("/tmp/")
            if label.endswith("multinode"):
                assert params["master_addr"] == LWS_RUNTIME["LWS_LEADER_ADDRESS"]
                assert params["master_port"] == 29500
                assert params["nnodes"] == int(LWS_RUNTIME["LWS_GROUP_SIZE"])
                assert params["node_rank"] == int(LWS_RUNTIME["LWS_WORKER_INDEX"])


def test_gpu_shards_match_gpus():
    for objs in (render_kustomize("gpu"), helm_render(helm_values_for("gpu"))):
        (_, spec, container), = containers(objs)
        gpus = container["resources"]["limits"]["nvidia.com/gpu"]
        assert env_values(container)["NUM_SHARD"] == str(gpus) == "2"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_multinode_world_size_and_rendezvous():
    for objs in (render_kustomize("multinode"), helm_render(helm_values_for("multinode"))):
        lws = one(objs, "LeaderWorkerSet")
        size = lws["spec"]["leaderWorkerTemplate"]["size"]
        for _role, _spec, container in containers(objs):
            env = env_values(container)
            assert int(env["NUM_SHARD"]) == size  # one shard per pod in the template
            assert env["MASTER_ADDR"] == "$(LWS_LEADER_ADDRESS)"
        service = one(objs, "Service")
        assert service["spec"]["selector"]["tgi-py/role"] == "leader"
        hpa = one(objs, "HorizontalPodAutoscaler")
        assert hpa["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"


# ---- drain, security, volumes ------------------------------------------------------------------------

def test_grace_period_outlasts_prestop_and_drain(renderings):
    for label, objs in renderings:
        for role, spec, container in containers(objs):
            drain = float(env_values(container)["GRACEFUL_TERMINATION_TIMEOUT"])
            pre_stop = 0.0
            if "lifecycle" in container:
                command = container["lifecycle"]["preStop"]["exec"]["command"]
                assert command[0] == "sleep", label
                pre_stop = float(command[1])
                assert pre_stop >= 5, label
            assert spec["terminationGracePeriodSeconds"] > pre_stop + drain, (label, role)


def test_pods_run_non_root_on_a_read_only_root_with_writable_scratch(renderings):
    for label, objs in renderings:
        for _, spec, container in containers(objs):
            assert spec["securityContext"]["runAsNonRoot"] is True, label
            assert spec["securityContext"]["runAsUser"] != 0, label
            assert spec["enableServiceLinks"] is False, label
            assert spec["automountServiceAccountToken"] is False, label
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, label
            assert security["allowPrivilegeEscalation"] is False, label
            assert security["capabilities"]["drop"] == ["ALL"], label
            volumes = {v["name"]: v for v in spec["volumes"]}
            mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
            assert mounts["/dev/shm"]["emptyDir"]["medium"] == "Memory", label
            writable = [path for path, volume in mounts.items() if "emptyDir" in volume]
            env = env_values(container)
            for needs_write in (str(Path(env["SHARD_UDS_PATH"]).parent), env["HF_HOME"]):
                assert any(needs_write == w or needs_write.startswith(w + "/") for w in writable), (label, needs_write)
            # The embedded model is baked into the image: the cache must not be hidden under a volume.
            assert not any(env["TGI_PY_CACHE"].startswith(path) for path in mounts), label
            assert "limits" in container["resources"] and "memory" in container["resources"]["limits"], label


def test_base_hpa_does_not_fight_the_deployment():
    deployment = one(render_kustomize("base"), "Deployment")
    assert "replicas" not in deployment["spec"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
