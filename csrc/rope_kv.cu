// rope_kv.cu: split-halves RoPE on q and k fused with the write of k and v into the paged KV cache, reading the
// fused QKV GEMM's output (each row's q, k and v side by side).
// CPU twin: CpuBackend::rope_write_kv (same f32 angle computation, accurate sincosf; a bf16 cache rounds to
// nearest even on both).
#include "common.cuh"

// One block per token: rotate its q heads into q, rotate its k heads into the cache, copy v (as KV: f32, bf16 or
// E4M3).
template <typename KV>
__global__ void rope_write_kv_kernel(float *q, const float *qkv, KV *k_cache, KV *v_cache, const int32_t *positions,
                                     const int32_t *slots, int nh, int nkv, int hd, float theta, float rope_scale) {
    const int64_t t = blockIdx.x;
    const int half = hd / 2;
    const float pos = static_cast<float>(positions[t]) / rope_scale;
    const int64_t qw = static_cast<int64_t>(nh) * hd, kw = static_cast<int64_t>(nkv) * hd;
    const float *row = qkv + t * (qw + 2 * kw);
    const int64_t slot = slots[t];
    const int pairs = (nh + nkv) * half;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        const int head = p / half, i = p % half;
        const float inv_freq = 1.f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(hd));
        float s, c;
        sincosf(pos * inv_freq, &s, &c);
        if (head < nh) {
            const float *x = row + head * hd;
            const float a = x[i], b = x[i + half];
            float *o = q + t * qw + head * hd;
            o[i] = a * c - b * s;
            o[i + half] = b * c + a * s;
        } else {
            const int kh = head - nh;
            const float *x = row + qw + kh * hd;
            const float a = x[i], b = x[i + half];
            KV *dst = k_cache + slot * kw + kh * hd;
            kv_store(dst, i, a * c - b * s);
            kv_store(dst, i + half, b * c + a * s);
        }
    }
    for (int j = threadIdx.x; j < kw; j += blockDim.x) kv_store(v_cache, slot * kw + j, row[qw + kw + j]);
}

extern "C" int tl_rope_write_kv(float *q, const float *qkv, void *k_cache, void *v_cache,
                                const int32_t *positions, const int32_t *slots, int n, int nh, int nkv, int hd,
                                float theta, float rope_scale, int kv_dtype, void *stream) {
    if (n == 0) return 0;
    if (n < 0 || nh <= 0 || nkv <= 0 || hd <= 0 || hd % 2 != 0 || kv_dtype < 0 || kv_dtype > 2) return TL_ERR_ARGS;
    if (kv_dtype == 2) {
        rope_write_kv_kernel<<<n, 256, 0, TL_STREAM(stream)>>>(q, qkv, static_cast<__nv_fp8_e4m3 *>(k_cache),
                                                               static_cast<__nv_fp8_e4m3 *>(v_cache), positions, slots,
                                                               nh, nkv, hd, theta, rope_scale);
    } else if (kv_dtype == 1) {
        rope_write_kv_kernel<<<n, 256, 0, TL_STREAM(stream)>>>(q, qkv, static_cast<__nv_bfloat16 *>(k_cache),
                                                               static_cast<__nv_bfloat16 *>(v_cache), positions, slots,
                                                               nh, nkv, hd, theta, rope_scale);
    } else {
        rope_write_kv_kernel<<<n, 256, 0, TL_STREAM(stream)>>>(q, qkv, static_cast<float *>(k_cache),
                                                               static_cast<float *>(v_cache), positions, slots, nh,
                                                               nkv, hd, theta, rope_scale);
    }
    return tl_launch_status();
}
