# The same steps as `make run`: install the package, serve it with `cds-service serve` (granian).
# Build: docker build -t lumbar-mri-cds .
# Run:   docker run -p 8080:8080 -v /etc/cds:/etc/cds:ro -e CDS_TRUSTED_ISSUERS=/etc/cds/issuers.json \
#          -e CDS_AUDIT_KEY=... -e CDS_DATABASE_URL=postgresql+psycopg://... lumbar-mri-cds
# Authentication is required by default: without CDS_TRUSTED_ISSUERS the service refuses to start.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY cds_service ./cds_service
RUN pip install --no-cache-dir --prefix=/install --require-hashes -r requirements.lock \
 && pip install --no-cache-dir --prefix=/install --no-deps .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin cds
WORKDIR /app
COPY --from=build /install /usr/local
COPY hooks ./hooks
COPY gunicorn.conf.py ./
RUN mkdir -p /app/var && chown cds:cds /app/var
ENV HOST=0.0.0.0 \
    PORT=8080 \
    CDS_HOOKS_DIR=/app/hooks \
    CDS_DATABASE_URL=sqlite:////app/var/cds.sqlite3 \
    PYTHONUNBUFFERED=1
USER cds
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s \
  CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)" || exit 1
CMD ["cds-service", "serve"]
