# syntax=docker/dockerfile:1
# The autocanary image: the daemon by default, and `autocanary testpage` and
# `autocanary probe` for the demo app (deploy/example).
#
#   docker build -t autocanary/autocanary:0.1.0 .
#
# Runtime dependencies are pinned by deploy/constraints.txt (hack/lock_image_deps.py).
# The builder stage uses relative paths and $VIRTUAL_ENV only: with no Docker
# engine in CI, tests/unit/test_dockerfile_install.py runs its RUN
# commands as written in a fresh virtualenv.

ARG PYTHON_IMAGE=python:3.11.14-slim-trixie

# ---- builder: the project's wheel and its pinned dependencies, in a virtualenv
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/autocanary
WORKDIR /build

# Dependencies first: this layer stays cached while only the code changes.
COPY deploy/constraints.txt deploy/constraints.txt
RUN python -m venv --without-pip "$VIRTUAL_ENV" \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir \
        --requirement deploy/constraints.txt

COPY pyproject.toml README.md ./
COPY src/ src/
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir dist . \
    && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir \
        --constraint deploy/constraints.txt dist/autocanary-*.whl

# ---- final: the same slim base (no compilers) and the virtualenv; no sources or wheels
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="autocanary" \
      org.opencontainers.image.description="Metrics-driven canary releases for Kubernetes Deployments" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/autocanary \
    PATH=/opt/autocanary/bin:$PATH
COPY --from=builder /opt/autocanary /opt/autocanary
# A numeric user, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["autocanary"]
CMD ["run", "-c", "/etc/autocanary/config.yaml"]
