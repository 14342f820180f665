# Multi-stage build of Surge's binaries. The runtime image holds only the binaries.
FROM rust:1-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (bundled): it needs these.
RUN apt-get update && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --locked -p surge-producer -p surge-worker -p surge-benches \
    && cp target/release/surge-producer target/release/surge-worker target/release/surge-demo /usr/local/bin/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* && useradd --system --uid 10001 surge
COPY --from=build /usr/local/bin/surge-* /usr/local/bin/
USER surge
ENV SURGE_LOG_FORMAT=json
