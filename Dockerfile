# syntax=docker/dockerfile:1
#
# admp hub image: a release build on Debian 12 (bookworm), run on distroless
# cc-debian12 (glibc + libgcc, no shell, no package manager) as the `nonroot`
# user (uid/gid 65532). The binary is its own health probe (`admp healthcheck`).
#
#   docker build -t admp .
#   docker run -p 8080:8080 -v admp-data:/data admp
#
# See docs/DEPLOY.md (volumes, secrets, DigitalOcean) and SECURITY.md.

ARG RUST_VERSION=1.95

# ---- build ------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src

# 1. Dependencies only, cached until Cargo.toml or Cargo.lock change: build a
#    dummy crate with the real manifest and lock file.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked --bin admp \
 && rm -rf src

# 2. The real sources: whatever .dockerignore lets through (an allow-list:
#    src/ and migrations/, which sqlx embeds at compile time). `touch` makes
#    cargo rebuild our crate rather than trust the dummy's timestamps.
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin admp \
 && install -D -m 0755 target/release/admp /out/usr/local/bin/admp \
 # The SQLite data directory, owned by distroless' nonroot user so a named
 # volume mounted on /data starts out writable by the hub.
 && install -d -m 0750 -o 65532 -g 65532 /out/data

# ---- run --------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot

COPY --from=build /out/usr/local/bin/admp /usr/local/bin/admp
COPY --from=build --chown=65532:65532 /out/data /data

ENV HOST=0.0.0.0 \
    PORT=8080 \
    LOG_FORMAT=json \
    STORAGE_BACKEND=sqlite \
    DATABASE_URL="sqlite:///data/admp.db?mode=rwc"

USER 65532:65532
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080

# Probes http://127.0.0.1:$PORT/health; exit 0 on 200, 1 otherwise.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/local/bin/admp", "healthcheck"]

ENTRYPOINT ["/usr/local/bin/admp"]
CMD ["serve"]
