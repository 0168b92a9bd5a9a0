# Build: the release binary, with the pages embedded.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY migrations ./migrations
COPY web-agent ./web-agent
COPY web-customer ./web-customer
RUN cargo build --release --locked --bin capturelink

# Run: a small image, a non-root user, state in the /data volume.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /data capturelink \
    && mkdir -p /data && chown capturelink /data
COPY --from=build /src/target/release/capturelink /usr/local/bin/capturelink
USER capturelink
# Set CAPTURELINK_PUBLIC_URL to the address customers reach (https://…): join links are built on it.
ENV CAPTURELINK_LISTEN=0.0.0.0:8080 \
    CAPTURELINK_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["capturelink"]
CMD ["serve"]
