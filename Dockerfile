# syntax=docker/dockerfile:1
# Multi-stage build of Surge's binaries (surge-producer, surge-worker, surge-demo).
# The runtime image holds only the binaries, CA certificates and curl (for healthchecks),
# and runs as the unprivileged user 10001 (deploy/*.yaml rely on that uid).
#
#   docker build -t surge .        # or: docker compose build
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (bundled): it needs these.
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
# The cache mounts keep the crate downloads and the target directory between builds
# (BuildKit); the binaries are copied out in the same step, since the mount goes away.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p surge-producer -p surge-worker -p surge-benches \
    && cp target/release/surge-producer target/release/surge-worker target/release/surge-demo /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 surge \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin surge
COPY --from=build /usr/local/bin/surge-producer /usr/local/bin/surge-worker /usr/local/bin/surge-demo /usr/local/bin/
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
# Writable scratch space only where mounted: the root filesystem may be read-only.
WORKDIR /tmp
ENV SURGE_LOG_FORMAT=json
# 8080: producer API and /metrics (--listen); 9090: worker /metrics and /healthz (--metrics-listen).
EXPOSE 8080 9090
CMD ["surge-producer", "--listen", "0.0.0.0:8080"]
