# The same steps as `make run`: install the locked dependencies and the package, serve it with
# `cds-service serve` (granian). BASE is any image with python3 and its venv module (python:3.11-slim;
# CI, which reaches no registry, builds a Debian one: scripts/container-test).
# Build: docker build -t lumbar-mri-cds .
# Run:   docker run -p 8080:8080 -v /etc/cds:/etc/cds:ro -e CDS_TRUSTED_ISSUERS=/etc/cds/issuers.json \
#          -e CDS_PUBLIC_BASE_URL=https://cds.hospital.org -e CDS_AUDIT_KEY=... \
#          -e CDS_DATABASE_URL=postgresql+psycopg://... lumbar-mri-cds
# Authentication is required by default: without CDS_TRUSTED_ISSUERS the service refuses to start.
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
WORKDIR /src
RUN python3 -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install --no-cache-dir --quiet --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY cds_service ./cds_service
COPY hooks ./hooks
RUN /opt/venv/bin/pip install --no-cache-dir --quiet --no-deps .

FROM ${BASE}
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin cds \
 && mkdir -p /app/var && chown cds:cds /app/var
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOST=0.0.0.0 \
    PORT=8080 \
    CDS_DATABASE_URL=sqlite:////app/var/cds.sqlite3 \
    PYTHONUNBUFFERED=1
USER cds
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD python3 -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)" || exit 1
CMD ["cds-service", "serve"]
