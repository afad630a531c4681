# syntax=docker/dockerfile:1
#
# herald image: one statically linked binary in an otherwise empty (scratch) image.
#
#   docker build -t herald:latest .
#   docker run -p 8080:8080 -v herald-data:/data herald:latest
#
# The builder runs the same build as scripts/build-static.sh (glibc +crt-static,
# `dist` profile: fat LTO, optimised for size except the hot-path crates, stripped;
# at most 10 MiB, which CI checks); that script also runs the binary in an empty
# chroot as a stand-in for this image. Keep the two in sync.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
COPY crates ./crates
# .cargo/config.toml sets LIBSQLITE3_FLAGS, which leaves out SQLite extensions and APIs
# herald never uses (crates/herald/build.rs packs the relocations of this static
# link). The target must be explicit so RUSTFLAGS reach only herald's own artifacts, not
# proc-macros or build scripts (those cannot be static). The C code (SQLite's, and
# ring's few C files) is built without unwind tables and without inlining of functions
# not marked inline: the same flags as scripts/build-static.sh, which says why.
# `uname -m` gives x86_64 or aarch64, so the same file builds natively on amd64 and arm64.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    TARGET="$(uname -m)-unknown-linux-gnu" \
    && RUSTFLAGS="-C target-feature=+crt-static" \
       env "CFLAGS_$(echo "$TARGET" | tr - _)=-fno-asynchronous-unwind-tables -fno-unwind-tables -fno-inline-functions" \
       cargo build --locked --profile dist --target "$TARGET" -p herald --bin herald --no-default-features --features s3 \
    && mkdir -p /out/rootfs/data \
    && cp "target/$TARGET/dist/herald" /out/herald \
    && /out/herald --version

FROM scratch
# /data must exist in the image, owned by the runtime user, so a fresh volume mounted
# there inherits that ownership (scratch has no shell to create it later).
COPY --from=builder --chown=65534:65534 /out/rootfs/ /
COPY --from=builder /out/herald /herald
# Numeric nobody:nogroup; scratch has no /etc/passwd.
USER 65534:65534
ENV HERALD_DATA_DIR=/data \
    HERALD_LISTEN_HTTP=:8080
VOLUME ["/data"]
EXPOSE 8080
# scratch has no curl: the binary probes itself (liveness endpoint /healthz). If you
# change HERALD_LISTEN_HTTP's port, override the health check's URL too.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/herald", "healthcheck", "--url", "http://127.0.0.1:8080/healthz"]
# herald handles SIGTERM itself (graceful drain, up to shutdown-timeout = 25s); give
# `docker stop` more than that: `docker stop -t 30`.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/herald"]
CMD ["serve"]
