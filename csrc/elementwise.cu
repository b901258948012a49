// elementwise.cu: embedding gather, RMSNorm (plain and fused with the residual add), SiLU-times-up,
// row gather and the f32 -> bf16 conversion of GEMM inputs. CPU twins: src/backend/cpu.rs.
#include "common.cuh"

__global__ void embedding_kernel(float *out, const uint16_t *table, const int32_t *ids, int h) {
    const int64_t row = blockIdx.x;
    const uint16_t *src = table + static_cast<int64_t>(ids[row]) * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[row * h + j] = bf16_bits_to_f32(src[j]);
}

extern "C" int tl_embedding(float *out, const uint16_t *table, const int32_t *ids, int n, int h, void *stream) {
    if (n <= 0 || h <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    embedding_kernel<<<n, 256, 0, TL_STREAM(stream)>>>(out, table, ids, h);
    return tl_launch_status();
}

// One block per row. With `residual`, residual += x first and the norm is taken of the sum. With FP8, the row of
// outputs is also quantized to E4M3 with one scale (max |out| / 448), as tl_quantize_fp8_rows would (the next
// GEMM's FP8 input, without a kernel of its own); with BF16, also written as bf16 (tl_f32_to_bf16's rounding).
template <bool ADD, bool FP8, bool BF16 = false>
__global__ void rms_norm_kernel(float *out, float *residual, const float *x, const float *w, int h, float eps,
                                uint8_t *codes, float *scales, uint16_t *out16 = nullptr) {
    __shared__ float sh[32];
    const int64_t base = static_cast<int64_t>(blockIdx.x) * h;
    float ss = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        float v = x[base + j];
        if (ADD) {
            v += residual[base + j];
            residual[base + j] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, sh);
    const float inv = 1.f / sqrtf(ss / static_cast<float>(h) + eps);
    const float *src = ADD ? residual : x;
    float amax = 0.f;
    for (int j = threadIdx.x; j < h; j += blockDim.x) {
        const float o = src[base + j] * inv * w[j];
        out[base + j] = o;
        if (BF16) out16[base + j] = f32_to_bf16_bits(o);
        if (FP8) amax = fmaxf(amax, fabsf(o));
    }
    if (FP8) {
        amax = block_max(amax, sh);
        const float s = (amax > 0.f && isfinite(amax)) ? amax / 448.f : 1.f;
        if (threadIdx.x == 0) scales[blockIdx.x] = s;
        for (int j = threadIdx.x; j < h; j += blockDim.x) {
            codes[base + j] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(out[base + j] / s, __NV_SATFINITE, __NV_E4M3));
        }
    }
}

static int norm_threads(int h) { return h >= 1024 ? 1024 : ((h + 31) / 32) * 32; }

extern "C" int tl_rms_norm(float *out, const float *x, const float *w, int n, int h, float eps, void *stream) {
    if (n <= 0 || h <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    rms_norm_kernel<false, false><<<n, norm_threads(h), 0, TL_STREAM(stream)>>>(out, nullptr, x, w, h, eps, nullptr, nullptr);
    return tl_launch_status();
}

extern "C" int tl_add_rms_norm(float *residual, const float *x, float *out, const float *w, int n, int h, float eps, void *stream) {
    if (n <= 0 || h <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    rms_norm_kernel<true, false><<<n, norm_threads(h), 0, TL_STREAM(stream)>>>(out, residual, x, w, h, eps, nullptr, nullptr);
    return tl_launch_status();
}

extern "C" int tl_rms_norm_fp8(float *out, float *residual, uint8_t *codes, float *scales, const float *x, const float *w,
                               int n, int h, float eps, void *stream) {
    if (n <= 0 || h <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    if (residual) {
        rms_norm_kernel<true, true><<<n, norm_threads(h), 0, TL_STREAM(stream)>>>(out, residual, x, w, h, eps, codes, scales);
    } else {
        rms_norm_kernel<false, true><<<n, norm_threads(h), 0, TL_STREAM(stream)>>>(out, nullptr, x, w, h, eps, codes, scales);
    }
    return tl_launch_status();
}

extern "C" int tl_rms_norm_bf16(float *out, float *residual, uint16_t *out16, const float *x, const float *w, int n,
                                int h, float eps, void *stream) {
    if (n <= 0 || h <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    if (residual) {
        rms_norm_kernel<true, false, true><<<n, norm_threads(h), 0, TL_STREAM(stream)>>>(out, residual, x, w, h, eps, nullptr, nullptr, out16);
    } else {
        rms_norm_kernel<false, false, true><<<n, norm_threads(h), 0, TL_STREAM(stream)>>>(out, nullptr, x, w, h, eps, nullptr, nullptr, out16);
    }
    return tl_launch_status();
}

// out[t, j] = silu(gu[t, j]) * gu[t, f + j]: gu holds each row's gate then its up (the fused gate/up GEMM).
template <bool BF16>
__global__ void silu_mul_kernel(float *out, uint16_t *out16, const float *gu, int64_t n, int64_t f) {
    const int64_t len = n * f;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < len; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t t = i / f, j = i - t * f;
        const float g = gu[2 * f * t + j];
        const float o = g / (1.f + expf(-g)) * gu[2 * f * t + f + j];
        out[i] = o;
        if (BF16) out16[i] = f32_to_bf16_bits(o);
    }
}

static int grid_for(int64_t len, int threads) {
    int64_t b = (len + threads - 1) / threads;
    return static_cast<int>(b < 65535 * 8 ? b : 65535 * 8);
}

extern "C" int tl_silu_mul(float *out, uint16_t *out16, const float *gate_up, int64_t n, int64_t f, void *stream) {
    if (n < 0 || f < 0) return TL_ERR_ARGS;
    if (n == 0 || f == 0) return 0;
    if (out16) {
        silu_mul_kernel<true><<<grid_for(n * f, 256), 256, 0, TL_STREAM(stream)>>>(out, out16, gate_up, n, f);
    } else {
        silu_mul_kernel<false><<<grid_for(n * f, 256), 256, 0, TL_STREAM(stream)>>>(out, nullptr, gate_up, n, f);
    }
    return tl_launch_status();
}

// One block per row: out = silu(gate) * up as silu_mul_kernel computes it, and the row also quantized to E4M3 with
// one scale (max |out| / 448), as tl_quantize_fp8_rows of `out` would: the down GEMM's FP8 input, without a
// kernel of its own.
__global__ void silu_mul_fp8_kernel(float *out, uint8_t *codes, float *scales, const float *gu, int f) {
    __shared__ float sh[32];
    const int64_t base = static_cast<int64_t>(blockIdx.x) * f;
    const float *g = gu + 2 * base, *u = g + f;
    float amax = 0.f;
    for (int j = threadIdx.x; j < f; j += blockDim.x) {
        const float x = g[j];
        const float o = x / (1.f + expf(-x)) * u[j];
        out[base + j] = o;
        amax = fmaxf(amax, fabsf(o));
    }
    amax = block_max(amax, sh);
    const float s = (amax > 0.f && isfinite(amax)) ? amax / 448.f : 1.f;
    if (threadIdx.x == 0) scales[blockIdx.x] = s;
    for (int j = threadIdx.x; j < f; j += blockDim.x) {
        codes[base + j] = static_cast<uint8_t>(__nv_cvt_float_to_fp8(out[base + j] / s, __NV_SATFINITE, __NV_E4M3));
    }
}

extern "C" int tl_silu_mul_fp8(float *out, uint8_t *codes, float *scales, const float *gate_up, int n, int f,
                               void *stream) {
    if (n <= 0 || f <= 0) return n == 0 ? 0 : TL_ERR_ARGS;
    silu_mul_fp8_kernel<<<n, norm_threads(f), 0, TL_STREAM(stream)>>>(out, codes, scales, gate_up, f);
    return tl_launch_status();
}

__global__ void gather_rows_kernel(float *out, const float *x, const int32_t *rows, int h) {
    const int64_t i = blockIdx.x;
    const float *src = x + static_cast<int64_t>(rows[i]) * h;
    for (int j = threadIdx.x; j < h; j += blockDim.x) out[i * h + j] = src[j];
}

extern "C" int tl_gather_rows(float *out, const float *x, const int32_t *rows, int r, int h, void *stream) {
    if (r <= 0 || h <= 0) return r == 0 ? 0 : TL_ERR_ARGS;
    gather_rows_kernel<<<r, 256, 0, TL_STREAM(stream)>>>(out, x, rows, h);
    return tl_launch_status();
}

__global__ void f32_to_bf16_kernel(uint16_t *dst, const float *src, int64_t len) {
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < len; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        dst[i] = f32_to_bf16_bits(src[i]);
    }
}

extern "C" int tl_f32_to_bf16(uint16_t *dst, const float *src, int64_t len, void *stream) {
    if (len <= 0) return len == 0 ? 0 : TL_ERR_ARGS;
    f32_to_bf16_kernel<<<grid_for(len, 256), 256, 0, TL_STREAM(stream)>>>(dst, src, len);
    return tl_launch_status();
}

__global__ void unshard_vocab_kernel(float *out, const float *parts, int rows, int vocab, int world, int width) {
    const int base = vocab / world, extra = vocab % world, w_max = base + (extra > 0);
    const int64_t big = static_cast<int64_t>(extra) * (base + 1); // columns held by the ranks with one more
    const int64_t total = static_cast<int64_t>(rows) * width;
    for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total; idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
        const int64_t i = idx / width, j = idx % width;
        int64_t k, local;
        if (j < big) {
            k = j / (base + 1);
            local = j - k * (base + 1);
        } else {
            k = extra + (j - big) / base;
            local = j - big - (k - extra) * base;
        }
        const int64_t w_k = base + (k < extra);
        out[idx] = parts[k * rows * w_max + i * w_k + local];
    }
}

extern "C" int tl_unshard_vocab(float *out, const float *parts, int rows, int vocab, int world, int width, void *stream) {
    if (rows == 0 || width == 0) return 0;
    if (rows < 0 || width < 0 || world <= 0 || vocab < world || width > vocab) return TL_ERR_ARGS;
    const int64_t total = static_cast<int64_t>(rows) * width;
    unshard_vocab_kernel<<<grid_for(total, 256), 256, 0, TL_STREAM(stream)>>>(out, parts, rows, vocab, world, width);
    return tl_launch_status();
}

extern "C" const char *tl_status_string(int status) {
    if (status == TL_ERR_ARGS) return "invalid kernel arguments";
    return cudaGetErrorString(static_cast<cudaError_t>(status));
}
