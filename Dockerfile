# The meshdemo image: the user service (`python -m service`) and the client CLI
# (`python -m client`, with its load generator and chaos tool) from one wheel.
#
# Build (BuildKit, the default builder of Docker 23+):  docker build -t meshdemo .
# skaffold builds it for kind; see skaffold.yaml and README.md "Deploy to kind".

# --- builder: the project as a wheel; the only stage that sees the source tree --------------
FROM python:3.11.14-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
# What the image runs, from pyproject's package list; bench/ is left out (benchmarks run on a
# developer's machine against local replicas, not in a pod). README is the wheel's long description.
COPY pyproject.toml README.md ./
COPY service/ service/
COPY client/ client/
COPY meshdemo/ meshdemo/
COPY mesh/ mesh/
# setuptools comes into the build backend's own isolated environment; pure Python, no compiler.
RUN pip wheel --no-deps --wheel-dir /wheels .

# --- runtime: the wheel and its dependencies (binary wheels only), no source, no build tools --
FROM python:3.11.14-slim-bookworm AS runtime

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp

# The wheel is bind-mounted from the builder, so it is not left in a layer.
# --only-binary: a dependency without a wheel fails the build instead of compiling.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-cache-dir --only-binary=:all: /wheels/*.whl \
    && groupadd --system --gid 10001 meshdemo \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin meshdemo

# Empty and not writable by the user: nothing is written here. Writable scratch is
# /tmp (HOME), which the chart mounts as an emptyDir under a read-only root FS.
WORKDIR /srv/meshdemo
USER 10001:10001

# gRPC, Prometheus /metrics (MESH_PORT, MESH_METRICS_PORT).
EXPOSE 50051 9464

# `python -m service` by default; the chart sets args to `client ...` for the
# load generator and the chaos CronJob.
ENTRYPOINT ["python", "-m"]
CMD ["service"]
