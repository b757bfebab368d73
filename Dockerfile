# shenhe container image.
#
# Two stages:
#   1. builder: the locked Rust toolchain (1.95 on Debian bookworm) builds a release binary.
#      Dependencies are compiled in their own layer (from Cargo.toml + Cargo.lock and a dummy
#      main), so editing src/ only recompiles the shenhe crate itself.
#   2. runtime: distroless "cc" (glibc + libgcc_s + CA certificates, nothing else), non-root
#      uid/gid 65532. Both stages are Debian 12, so the binary's glibc matches.
#
# Build:   docker build -t shenhe:0.1.0 .
# Run:     docker run --rm -p 8080:8080 -v "$PWD/config:/etc/shenhe:ro" shenhe:0.1.0
#
# No HEALTHCHECK on purpose: distroless has no shell, curl or wget, and shenhe has no
# "health" subcommand to probe itself. Liveness (/healthz) and readiness (/readyz) on the
# admin port 9090 are probed by Kubernetes: see deploy/kubernetes/base/deployment.yaml.

# ---------------------------------------------------------------------------------------------
FROM rust:1.95-slim-bookworm AS builder

# rust:*-slim already carries gcc and libc6-dev, which the C parts of some crates (zstd, brotli)
# need. TLS is rustls (no OpenSSL), so no -dev packages are installed.
WORKDIR /build

# bash with pipefail, so a failing command on the left of a pipe fails the build (hadolint DL4006).
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Strip the (std) debug info but keep symbol names, so panics still have readable backtraces.
# Set as an environment variable so Cargo.toml stays the single source of the profile.
ENV CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never

# --- Layer 1: dependencies only --------------------------------------------------------------
# Copy just the manifests, create stub targets, build. This layer is reused until Cargo.toml or
# Cargo.lock changes. Explicit [[bench]] targets (criterion, harness = false) must exist for
# Cargo to read the manifest, so a stub is made for each one as well.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && : > src/lib.rs \
 && awk '/^\[\[bench\]\]/ {b = 1; next} /^\[/ {b = 0} b && $1 == "name" {gsub(/"/, "", $3); print $3}' Cargo.toml \
    | while read -r bench; do echo 'fn main() {}' > "benches/${bench}.rs"; done \
 && cargo build --release --locked --bin shenhe \
 && rm -rf src benches

# --- Layer 2: the real source ----------------------------------------------------------------
# The whole context is copied (see .dockerignore) so include_str!/build.rs inputs are present.
# COPY keeps the files' own mtimes, which can be older than the stub build: touch them so Cargo
# sees the crate as changed, and drop the stub's artefacts to be sure.
COPY . .
RUN find src -type f -exec touch {} + \
 && rm -rf target/release/.fingerprint/shenhe-* target/release/deps/shenhe-* target/release/deps/libshenhe-* \
 && cargo build --release --locked --bin shenhe \
 && ./target/release/shenhe --version \
 && mkdir -p /out/usr/local/bin /out/var/lib/shenhe/audit /out/etc/shenhe/lists /out/etc/shenhe/keys \
 && cp target/release/shenhe /out/usr/local/bin/shenhe

# ---------------------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="shenhe" \
      org.opencontainers.image.description="Inline moderation proxy for generative-AI APIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

COPY --from=builder /out/usr/local/bin/shenhe /usr/local/bin/shenhe
# Empty mount points owned by the runtime user: config (read-only ConfigMap/Secret in k8s) and
# the audit directory (a PersistentVolumeClaim in k8s; a named volume with plain docker).
COPY --from=builder --chown=65532:65532 /out/etc/shenhe /etc/shenhe
COPY --from=builder --chown=65532:65532 /out/var/lib/shenhe /var/lib/shenhe

# Numeric uid:gid so Kubernetes can verify runAsNonRoot without a passwd lookup.
USER 65532:65532

# 8080: client traffic. 9090: admin (/healthz, /readyz, /metrics, /admin/*); the binary's
# default admin_listen is 127.0.0.1:9090, the pod config sets 0.0.0.0:9090.
EXPOSE 8080 9090

ENTRYPOINT ["/usr/local/bin/shenhe"]
CMD ["serve", "--config", "/etc/shenhe/shenhe.yaml"]
