// fp8.cu: FP8 (E4M3) weights and activations: row quantization (one scale per row: per output channel for
// weights at load, per token for activations before each GEMM), the scales applied after cuBLASLt's FP8 GEMM,
// and a plain FP8 GEMM for shapes cuBLASLt's FP8 kernels refuse. CPU twins: src/backend/fp8.rs (`Fp8Rows`,
// `gemm_fp8`) and the CPU backend's `WeightFormat::Fp8`.
#include "common.cuh"
#include <cuda_fp8.h>

__device__ __forceinline__ float load_f32(const float *x, int64_t i) { return x[i]; }
__device__ __forceinline__ float load_f32(const uint16_t *x, int64_t i) { return bf16_bits_to_f32(x[i]); }

__device__ __forceinline__ float e4m3_value(uint8_t c) {
    __nv_fp8_e4m3 v;
    v.__x = c;
    return static_cast<float>(v);
}

// One block per row: amax by a block reduction, scale = amax / 448 (1 for a row of zeros or a non-finite amax),
// each value divided by the scale (IEEE division, as the CPU twin) and rounded to the nearest E4M3 code, ties to
// even, saturating to +-448.
template <typename T>
__global__ void quantize_rows_kernel(uint8_t *out, float *scales, const T *x, int k) {
    __shared__ float sh[32];
    __shared__ float scale_sh;
    const int64_t base = static_cast<int64_t>(blockIdx.x) * k;
    float amax = 0.f;
    for (int j = threadIdx.x; j < k; j += blockDim.x) amax = fmaxf(amax, fabsf(load_f32(x, base + j)));
    amax = warp_max(amax);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) sh[warp] = amax;
    __syncthreads();
    if (warp == 0) {
        float m = lane < nw ? sh[lane] : 0.f;
        m = warp_max(m);
        if (lane == 0) {
            const float s = (m > 0.f && isfinite(m)) ? m / 448.f : 1.f;
            scale_sh = s;
            scales[blockIdx.x] = s;
        }
    }
    __syncthreads();
    const float s = scale_sh;
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        out[base + j] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(load_f32(x, base + j) / s, __NV_SATFINITE, __NV_E4M3));
    }
}

static int row_threads(int k) { return k >= 1024 ? 1024 : ((k + 31) / 32) * 32; }

extern "C" int tl_quantize_fp8_rows(uint8_t *out, float *scales, const float *x, int n, int k, void *stream) {
    if (n <= 0 || k <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    quantize_rows_kernel<float><<<n, row_threads(k), 0, TL_STREAM(stream)>>>(out, scales, x, k);
    return tl_launch_status();
}

extern "C" int tl_quantize_fp8_rows_bf16(uint8_t *out, float *scales, const uint16_t *x, int n, int k, void *stream) {
    if (n <= 0 || k <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    quantize_rows_kernel<uint16_t><<<n, row_threads(k), 0, TL_STREAM(stream)>>>(out, scales, x, k);
    return tl_launch_status();
}

// out[t, j] = out[t, j] * sx[t] * sw[j] (the epilogue of the FP8 GEMM: accumulator, then the two scales).
__global__ void fp8_scale_out_kernel(float *out, const float *sx, const float *sw, int n, int m) {
    const int64_t total = static_cast<int64_t>(n) * m;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        out[i] = out[i] * sx[i / m] * sw[i % m];
    }
}

extern "C" int tl_fp8_scale_out(float *out, const float *sx, const float *sw, int n, int m, void *stream) {
    if (n <= 0 || m <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    const int64_t total = static_cast<int64_t>(n) * m;
    int64_t blocks = (total + 255) / 256;
    if (blocks > 65535 * 8) blocks = 65535 * 8;
    fp8_scale_out_kernel<<<static_cast<int>(blocks), 256, 0, TL_STREAM(stream)>>>(out, sx, sw, n, m);
    return tl_launch_status();
}

// One thread per output: the E4M3 products (exact in f32) summed in k order, then the scales: bit for bit the
// CPU's `fp8::gemm_fp8`. For the shapes cuBLASLt's FP8 kernels refuse (k or m not a multiple of 16: the test
// fixtures), never on a Llama-2 shape.
__global__ void gemm_fp8_plain_kernel(float *out, const uint8_t *xq, const float *sx, const uint8_t *wq, const float *sw,
                                      int n, int m, int k) {
    const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
    if (i >= static_cast<int64_t>(n) * m) return;
    const int64_t t = i / m, j = i % m;
    const uint8_t *xr = xq + t * k, *wr = wq + j * k;
    float acc = 0.f;
    for (int c = 0; c < k; ++c) acc += e4m3_value(xr[c]) * e4m3_value(wr[c]);
    out[i] = acc * sx[t] * sw[j];
}

extern "C" int tl_gemm_fp8_plain(float *out, const uint8_t *xq, const float *sx, const uint8_t *wq, const float *sw, int n,
                                 int m, int k, void *stream) {
    if (n <= 0 || m <= 0 || k <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    const int64_t total = static_cast<int64_t>(n) * m;
    const int64_t blocks = (total + 127) / 128;
    if (blocks > 0x7fffffff) return TL_ERR_ARGS;
    gemm_fp8_plain_kernel<<<static_cast<int>(blocks), 128, 0, TL_STREAM(stream)>>>(out, xq, sx, wq, sw, n, m, k);
    return tl_launch_status();
}
