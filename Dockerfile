# triton-llama in NVIDIA's Triton server image: builds libtriton_llama.so (CPU + CUDA engine) and the
# `triton-llama` CLI with Rust and CUDA 12, installs the backend as /opt/tritonserver/backends/llama, and serves
# on 8000 (HTTP), 8001 (gRPC) and 8002 (metrics). See README.md, "Docker".
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:24.10-py3
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:12.6.2-devel-ubuntu22.04

FROM ${CUDA_DEVEL_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config libclang-dev \
    && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain stable
ENV PATH=/root/.cargo/bin:/usr/local/cuda/bin:$PATH CUDA_HOME=/usr/local/cuda
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features cuda

FROM ${TRITON_IMAGE}
COPY --from=build /src/target/release/libtriton_llama.so /opt/tritonserver/backends/llama/libtriton_llama.so
COPY --from=build /src/target/release/triton-llama /usr/local/bin/triton-llama
COPY scripts /opt/triton-llama/scripts
COPY triton_model_repo /opt/triton-llama/triton_model_repo
# The OpenAI-compatible frontend (deploy_triton.py --openai_port 9000): same pins as scripts/setup.sh.
RUN pip install --no-cache-dir 'fastapi==0.165.0' 'uvicorn==0.55.0' 'tritonclient[grpc]==2.51.0' 'numpy<2'
WORKDIR /opt/triton-llama
EXPOSE 8000 8001 8002 9000
# Mount the checkpoint at /models and pass deploy_triton.py flags, e.g.
#   docker run --gpus all -p 8000-8002:8000-8002 -v $PWD:/models IMAGE --nemo_checkpoint /models/X.nemo --device cuda --num_gpus 2
ENTRYPOINT ["python3", "scripts/deploy_triton.py", "--tritonserver", "/opt/tritonserver/bin/tritonserver", \
            "--backend_lib", "/opt/tritonserver/backends/llama/libtriton_llama.so", "--cli", "/usr/local/bin/triton-llama"]
