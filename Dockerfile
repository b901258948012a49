# triton-llama in NVIDIA's Triton server image: builds libtriton_llama.so (CPU + CUDA engine) and the
# `triton-llama` CLI with Rust and CUDA 13, installs the backend as /opt/tritonserver/backends/llama, and serves
# on 8000 (HTTP), 8001 (gRPC) and 8002 (metrics). See README.md, "Docker".
# One CUDA major everywhere: Triton 25.10 is built on CUDA 13.0.2 (driver 575 or later), the build stage compiles
# with CUDA 13.0's nvcc, and Cargo.toml's cudarc feature is `cuda-13000` (it loads libcublas.so.13).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:25.10-py3
ARG CUDA_DEVEL_IMAGE=nvidia/cuda:13.0.2-devel-ubuntu24.04

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
# The OpenAI-compatible frontend (deploy_triton.py --openai_port 9000): same pins as scripts/setup.sh. NCCL for
# tensor parallelism: the wheel scripts/install_cuda_toolchain.sh pins, at a fixed path the engine is told
# (TL_NCCL_LIB), so no image's library layout matters. Ubuntu 24.04 marks its Python as externally managed.
ENV PIP_BREAK_SYSTEM_PACKAGES=1
RUN pip install --no-cache-dir 'fastapi==0.165.0' 'uvicorn==0.55.0' 'tritonclient[grpc]==2.51.0' 'numpy<2' \
    && pip install --no-cache-dir --no-deps --target /opt/triton-llama/nccl 'nvidia-nccl-cu13==2.28.9' \
    && test -f /opt/triton-llama/nccl/nvidia/nccl/lib/libnccl.so.2
# NCCL_RUNTIME_CONNECT=0: the ranks connect when the group is created, and NCCL_LAUNCH_MODE=PARALLEL (NCCL's
# default, pinned): each rank launches alone; so no collective waits on a peer inside its enqueue (the lock that
# keeps an abort from freeing a communicator in use; src/comm/nccl.rs).
ENV TL_NCCL_LIB=/opt/triton-llama/nccl/nvidia/nccl/lib/libnccl.so.2 NCCL_RUNTIME_CONNECT=0 NCCL_LAUNCH_MODE=PARALLEL
WORKDIR /opt/triton-llama
EXPOSE 8000 8001 8002 9000
# Mount the checkpoint at /models and pass deploy_triton.py flags, e.g.
#   docker run --gpus all -p 8000-8002:8000-8002 -v $PWD:/models IMAGE --nemo_checkpoint /models/X.nemo --device cuda --num_gpus 2
ENTRYPOINT ["python3", "scripts/deploy_triton.py", "--tritonserver", "/opt/tritonserver/bin/tritonserver", \
            "--backend_lib", "/opt/tritonserver/backends/llama/libtriton_llama.so", "--cli", "/usr/local/bin/triton-llama"]
