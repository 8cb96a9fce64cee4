# One image with every Baton binary: baton, baton-authorization, baton-risk, baton-pci,
# baton-transaction. docker-compose.yml picks the binary per container.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --locked \
 && mkdir /out \
 && cp target/release/baton target/release/baton-authorization target/release/baton-risk \
       target/release/baton-pci target/release/baton-transaction /out/

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 baton && mkdir /data && chown baton /data
COPY --from=build /out/ /usr/local/bin/
COPY workflows /etc/baton/workflows
USER baton
WORKDIR /data
ENTRYPOINT []
CMD ["baton", "run"]
