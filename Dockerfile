# jac-orc image: a statically linked (musl) binary on distroless/static, running as non-root.
#
#   docker build -t jac-orc:0.1.0 .
#
# protoc comes from the protoc-bin-vendored crate and TLS from rustls, so the build needs no
# system packages beyond musl-tools, and the runtime image needs no libc, shell or CA bundle
# (the in-cluster API server CA is mounted with the service-account token).
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(uname -m)-unknown-linux-musl"
WORKDIR /src
COPY . .
RUN target="$(uname -m)-unknown-linux-musl" \
 && cargo build --release --target "$target" --bin jac-orc \
 && cp "target/$target/release/jac-orc" /jac-orc

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /jac-orc /usr/local/bin/jac-orc
# distroless's "nonroot" user, numeric so runAsNonRoot can verify it.
USER 65532:65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/jac-orc"]
CMD ["serve", "--backend", "kube"]
