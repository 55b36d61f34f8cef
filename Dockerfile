# dedup-engine in a container.
#
#   docker build -t dedup-engine .
#   docker run --rm -v /data:/data:ro dedup-engine find /data
#   docker run --rm -v /data:/data:ro -v "$PWD":/out dedup-engine find /data -f json -o /out/report.json
#
# Roots are mounted read-only: `dedup find` never writes to them. The image runs as an unprivileged
# user (uid 10001); files that user may not read are reported as issues (exit 1). To audit
# everything, add `--user 0`. A directory written to (`-o`, `dedup synth`) must be writable by the
# user, e.g. `--user "$(id -u):$(id -g)"`.

# --- builder: wheels for the project and every dependency -------------------------------------
FROM python:3.11-slim AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
# Only what the build needs; pyproject.toml names README.md as the package's readme.
COPY pyproject.toml README.md ./
COPY dedup_engine ./dedup_engine
RUN pip wheel --wheel-dir /wheels .

# --- runtime: the wheels installed, nothing else ------------------------------------------------
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=builder /wheels /tmp/wheels
RUN pip install --no-index --find-links /tmp/wheels dedup-engine \
    && rm -rf /tmp/wheels \
    && useradd --system --uid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin dedup

USER 10001
WORKDIR /tmp
ENTRYPOINT ["dedup"]
CMD ["--help"]
