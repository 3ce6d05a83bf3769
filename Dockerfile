# The sft-operator image: the kopf operator only (no torch; the trainer has its own image in
# trainer-image/). Build from the repository root:  docker build -t sft-operator:0.1.0 .
#
# Pinned: the base image tag here, the build tools below, the operator's dependencies in
# operator/pyproject.toml and core/pyproject.toml. For fully reproducible builds pin the base by digest too:
#   docker build --build-arg PYTHON_IMAGE=python:3.12.8-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.12.8-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# Build tools installed once, pinned, and used without build isolation (which would fetch
# unpinned ones).
RUN python -m venv /opt/sft-operator \
 && /opt/sft-operator/bin/pip install pip==24.3.1 setuptools==75.6.0 wheel==0.45.1
WORKDIR /src
# Two distributions: the shared core (core/) and the operator with its reporter (operator/); the
# client and the launcher are not in this image.
COPY core/pyproject.toml core/
COPY operator/pyproject.toml operator/
# The dependencies in a layer of their own (installed through empty placeholder packages, then
# the placeholders uninstalled): a change to the sources alone reinstalls only our packages.
# Every package the two pyproject.toml list needs its placeholder (tests/unit/test_packaging.py checks).
RUN mkdir -p core/sft_core core/sft_models operator/sft_operator operator/sft_reporter \
 && touch core/sft_core/__init__.py core/sft_models/__init__.py operator/sft_operator/__init__.py \
      operator/sft_reporter/__init__.py \
 && /opt/sft-operator/bin/pip install --no-build-isolation ./core ./operator \
 && /opt/sft-operator/bin/pip uninstall --yes sft-operator-core sft-operator-controller \
 && rm -rf core operator
COPY core/ core/
COPY operator/ operator/
RUN /opt/sft-operator/bin/pip install --no-build-isolation --no-deps ./core ./operator \
 && /opt/sft-operator/bin/pip check \
 && /opt/sft-operator/bin/sft-operator-controller --help >/dev/null \
 && /opt/sft-operator/bin/python -m sft_reporter --help >/dev/null \
 && /opt/sft-operator/bin/pip uninstall --yes setuptools wheel pip

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="sft-operator" \
      org.opencontainers.image.description="Kubernetes operator for supervised fine-tuning with instructlab-training" \
      org.opencontainers.image.licenses="Apache-2.0"
# Same base image as the build stage, so the venv's interpreter symlinks resolve.
COPY --from=build /opt/sft-operator /opt/sft-operator
ENV PATH=/opt/sft-operator/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 65532:65532
WORKDIR /tmp
# kopf's liveness endpoint (the chart passes --liveness=http://0.0.0.0:8080/healthz).
EXPOSE 8080
ENTRYPOINT ["sft-operator-controller", "run"]
