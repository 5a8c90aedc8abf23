# syntax=docker/dockerfile:1
#
# One image for every process of the service; the command picks the role:
#   docker run IMAGE serve      the API (default; listens on 0.0.0.0:8000)
#   docker run IMAGE worker     one GPU worker (one container per GPU)
#   docker run IMAGE webhooks   the webhook deliverer
#
# The HEALTHCHECK below probes the API's /healthz. Worker and webhook containers have no HTTP port:
# docker-compose.yml disables the check for them (`healthcheck: disable: true`); a worker's readiness is
# published to Redis and reported by the API's /readyz.

ARG CUDA_IMAGE=nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

# PyPI's default torch wheel for Linux x86_64 is the CUDA build and brings its own CUDA libraries;
# the host's NVIDIA driver must be new enough for the CUDA version of that wheel.
ARG TORCH_SPEC=torch==2.13.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# python3.11-dev and gcc are runtime needs, not only build ones: torch.compile (COMPILE=true, the
# default on CUDA) runs Triton, which compiles a small C launcher against Python.h on first use.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev gcc libc6-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && pip install --upgrade pip

# torch first, in its own layer: it is the largest download and changes least often.
RUN pip install "${TORCH_SPEC}"

# Then the project (only what the package needs; see .dockerignore), with torchao for PRECISION=fp8.
WORKDIR /tmp/src
COPY pyproject.toml README.md cli.py ./
COPY app/ app/
COPY core/ core/
COPY worker/ worker/
COPY model/ model/
COPY benchmarks/ benchmarks/
RUN pip install .[fp8] \
    && cd / && rm -rf /tmp/src

# A non-root user; /srv/var holds the results and the demo checkpoint. The results folder exists in the
# image, owned by that user, so a fresh named volume mounted over it inherits the ownership.
RUN groupadd --gid 10001 onediffusion \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/onediffusion \
        --shell /usr/sbin/nologin onediffusion \
    && mkdir -p /srv/var/results /srv/var/demo-checkpoint \
    && chown -R 10001:10001 /srv

WORKDIR /srv
USER 10001:10001

ENV HOST=0.0.0.0 \
    PORT=8000 \
    RESULTS_DIR=/srv/var/results \
    DEMO_CHECKPOINT_DIR=/srv/var/demo-checkpoint

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8000'), timeout=3)"]

ENTRYPOINT ["onediffusion"]
CMD ["serve"]
