# jac-orc image: the release binary on Debian bookworm, running as a numeric non-root user.
#
#   docker build -t jac-orc:0.1.0 .
#
# scripts/images.sh builds the same image offline for the test cluster (images/images.json, "jac-orc"):
# the same distribution, binary path, user 65532:65532 (nonroot), entrypoint and command. The test
# tests/cluster/images.rs checks that the two agree. TLS comes from rustls and protoc from the
# protoc-bin-vendored crate, so neither stage needs extra packages; the in-cluster API server CA is
# mounted with the service-account token.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin jac-orc \
 && cp target/release/jac-orc /jac-orc

FROM debian:bookworm-slim
COPY --from=build /jac-orc /usr/local/bin/jac-orc
# Numeric, so runAsNonRoot can verify it (distroless's "nonroot" uid).
RUN groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /home/nonroot --create-home --shell /usr/sbin/nologin nonroot
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/jac-orc"]
CMD ["serve", "--backend", "kube"]
