# syntax=docker/dockerfile:1
# The slim RunPod image: CPython + the artifact contract, the bootstrap and the worker's own code, and
# no ML dependency. The ML
# environment (torch, F5-TTS, WhisperX: 6-8 GB) is a release artifact that `python -m worker.bootstrap`
# installs onto the network volume once, then execs `<env>/bin/python -m worker` with this code on
# PYTHONPATH. Layer sizes and how they were estimated: docs/image.md. Deployment: docs/deploy.md.
#
# Base: tag pinned and digest pinned (the multi-platform index of python:3.11.14-slim-bookworm, as
# published in public Dockerfiles; no registry is reachable where this file was written, so the first
# image build is what verifies it: a wrong digest fails `docker build`). Updates: bump both together
# (Dependabot's docker ecosystem does, see .github/dependabot.yml; it reads a literal FROM, not an ARG).
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

# The artifact this image is built for (image.yml passes the release's manifest URL and sha256). Both end
# up as ENV, so `docker run -e MANIFEST_URL=...` (or the RunPod template) overrides them at run time. The
# RunPod Hub builds this file without build args: its template's MANIFEST_URL (.runpod/hub.json's default,
# the repository's latest release) is what such an image installs.
ARG MANIFEST_URL=""
ARG MANIFEST_SHA256=""
ARG VERSION=dev
ARG REVISION=unknown

# zstd: the CLI for recovering an artifact by hand inside the container (docs/artifact.md);
# ca-certificates: already in the base, named so HTTPS to release assets survives a base change.
RUN apt-get update \
 && apt-get install -y --no-install-recommends zstd=1.5.4+dfsg2-5 ca-certificates=20250419~deb12u2 \
 && rm -rf /var/lib/apt/lists/*

# The bootstrap's one wheel, hash-pinned. zstandard imports its C backend by default; its second,
# cffi backend (12 MB) is never imported here, so it is dropped.
COPY requirements/image.txt /tmp/requirements-image.txt
RUN PIP_ROOT_USER_ACTION=ignore python -m pip install --no-cache-dir --disable-pip-version-check \
        --only-binary=:all: --require-hashes -r /tmp/requirements-image.txt \
 && rm -f /tmp/requirements-image.txt \
 && site=$(python -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])') \
 && rm -f "$site"/zstandard/_cffi.*.so "$site"/zstandard/backend_cffi.py \
 && python -c 'import zstandard; print("zstandard", zstandard.__version__, zstandard.backend)'

# The project's code, last: it changes most often and is the smallest layer. Byte-compiled once here
# (the env's interpreter is CPython 3.11 too, so it reuses these .pyc files on every cold start).
WORKDIR /opt/app
COPY artifact/ /opt/app/artifact/
COPY worker/ /opt/app/worker/
RUN python -m compileall -q /opt/app/artifact /opt/app/worker

# Runs as root on purpose: RunPod network volumes are mounted root-owned at /runpod-volume and are shared
# with pods that write as root; a non-root user could not create envs/ there without a chown of the whole
# shared volume. Elsewhere, run it with --user and RUNPOD_VOLUME pointing at a directory that user owns.
ENV MANIFEST_URL=${MANIFEST_URL} \
    MANIFEST_SHA256=${MANIFEST_SHA256} \
    PYTHONPATH=/opt/app \
    PYTHONUNBUFFERED=1

LABEL org.opencontainers.image.title="runpod-f5-tts" \
      org.opencontainers.image.description="F5-TTS + WhisperX RunPod worker: slim bootstrap image" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      io.runpod-f5-tts.manifest-url="${MANIFEST_URL}" \
      io.runpod-f5-tts.manifest-sha256="${MANIFEST_SHA256}"

# No HEALTHCHECK: RunPod serverless ignores Docker health checks; a worker's health is its job loop
# (RUNPOD_INIT_TIMEOUT covers the first start), and the bootstrap reports failures through its jobs.
ENTRYPOINT ["python", "-m", "worker.bootstrap"]
