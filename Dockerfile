# syntax=docker/dockerfile:1
# nymstr node and CLI client. Multi-stage: build with the Rust toolchain, run on a slim
# Debian as a non-root user with the node's data on a volume.
#   docker build -t nymstr .
#   docker run -d --name nymstr -p 7000:7000 -v nymstr-data:/data nymstr
# The entrypoint initialises /data on first start (keys + config.toml), then runs the node.

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p nymstr-node -p nymstr-client --bins \
 && install -D -m 0755 target/release/nymstr-node /out/nymstr-node \
 && install -D -m 0755 target/release/nymstr /out/nymstr

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --shell /usr/sbin/nologin nymstr \
 && mkdir -p /data && chown nymstr:nymstr /data
COPY --from=build /out/nymstr-node /out/nymstr /usr/local/bin/
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
USER nymstr
VOLUME ["/data"]
EXPOSE 7000
ENV RUST_LOG=info NYMSTR_LISTEN=0.0.0.0:7000
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["run"]
