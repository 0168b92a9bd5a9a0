# Build: the release binary, with the pages embedded. The build commands are scripts/build-release,
# which CI runs too.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock sqlx.toml ./
# What the store's statements were checked against (sqlx's query macros): no database at build.
COPY .sqlx ./.sqlx
COPY crates ./crates
COPY src ./src
COPY migrations ./migrations
COPY web-agent ./web-agent
COPY web-customer ./web-customer
COPY web-shared ./web-shared
# A workspace member (the load generator): cargo needs its manifest to read the workspace.
COPY tools ./tools
COPY scripts/build-release ./scripts/build-release
RUN ./scripts/build-release

# Run: a small image, a non-root user, state in the /data volume.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data capturelink \
    && mkdir -p /data && chown 10001:10001 /data
COPY --from=build /src/target/release/capturelink /usr/local/bin/capturelink
USER 10001:10001
# Set CAPTURELINK_PUBLIC_URL to the address customers reach (https://…): join links are built on it.
# Every other setting is an environment variable too (docs/OPERATIONS.md).
ENV CAPTURELINK_LISTEN=0.0.0.0:8080 \
    CAPTURELINK_DATA_DIR=/data \
    CAPTURELINK_PROBE_URL=http://127.0.0.1:8080/healthz
VOLUME /data
EXPOSE 8080
# The image has no curl: the binary asks itself.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["capturelink", "probe"]
ENTRYPOINT ["capturelink"]
CMD ["serve"]
