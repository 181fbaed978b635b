# syntax=docker/dockerfile:1
# tokenvisor: a multi-stage build of the `tokenvisor` binary into a small, non-root image.
#   docker build -t tokenvisor .
#   docker run -p 127.0.0.1:7070:7070 -v tokenvisor-data:/var/lib/tokenvisor tokenvisor

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p tokenvisor-server \
    && install -D -m 0755 target/release/tokenvisor /out/tokenvisor

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/tokenvisor --shell /usr/sbin/nologin tokenvisor \
    && install -d -o tokenvisor -g tokenvisor -m 0700 /var/lib/tokenvisor
COPY --from=build /out/tokenvisor /usr/local/bin/tokenvisor
USER 10001:10001
WORKDIR /var/lib/tokenvisor
ENV TOKENVISOR_DATA_DIR=/var/lib/tokenvisor \
    TOKENVISOR_ADMIN_ADDR=0.0.0.0:7070 \
    RUST_LOG=info
VOLUME ["/var/lib/tokenvisor"]
EXPOSE 7070
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:7070/healthz"]
ENTRYPOINT ["tokenvisor"]
CMD ["serve"]
