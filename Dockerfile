# Builds triton-llama (CPU engine, CLI and libtriton_llama.so) from source.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked

FROM debian:bookworm-slim
COPY --from=build /src/target/release/triton-llama /usr/local/bin/triton-llama
COPY --from=build /src/target/release/libtriton_llama.so /opt/tritonserver/backends/llama/libtriton_llama.so
ENTRYPOINT ["triton-llama"]
