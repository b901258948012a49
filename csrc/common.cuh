// common.cuh: helpers shared by the kernels: status handling, bf16 widening, warp and block reductions.
#pragma once
#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <stdint.h>
#include "ops.h"

#define TL_STREAM(s) (static_cast<cudaStream_t>(s))

// Status of the launches just enqueued (launch-configuration errors show up here).
static inline int tl_launch_status() { return static_cast<int>(cudaGetLastError()); }

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t b) { return __uint_as_float(static_cast<uint32_t>(b) << 16); }

// Round to nearest even, as half::bf16::from_f32 (the CPU twin's GEMM-input rounding).
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float v) {
    __nv_bfloat16 b = __float2bfloat16_rn(v);
    return *reinterpret_cast<uint16_t *>(&b);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// `WarpOp` (warp_sum, warp_max) over the block; every thread gets the result. `sh` needs 32 floats. blockDim.x is
// a multiple of 32. The lanes past the block's warps bring 0: the sum's identity, and for the max, which is taken
// of magnitudes (|x|), no larger than any of them.
template <float (*WarpOp)(float)>
__device__ __forceinline__ float block_reduce(float v, float *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = WarpOp(v);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.f;
    return WarpOp(v);
}

__device__ __forceinline__ float block_sum(float v, float *sh) { return block_reduce<warp_sum>(v, sh); }

// Of non-negative values only (see block_reduce).
__device__ __forceinline__ float block_max(float v, float *sh) { return block_reduce<warp_max>(v, sh); }

// K/V cache values: f32, bf16 (round to nearest even when stored, as the CPU twin's half::bf16::from_f32) or E4M3
// with scale 1 (round to nearest even, saturating to +-448: the CPU twin's fp8::f32_to_e4m3).
__device__ __forceinline__ float kv_load(const float *p, int64_t i) { return p[i]; }
__device__ __forceinline__ float kv_load(const __nv_bfloat16 *p, int64_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ float kv_load(const __nv_fp8_e4m3 *p, int64_t i) { return static_cast<float>(p[i]); }
__device__ __forceinline__ void kv_store(float *p, int64_t i, float v) { p[i] = v; }
__device__ __forceinline__ void kv_store(__nv_bfloat16 *p, int64_t i, float v) { p[i] = __float2bfloat16(v); }
__device__ __forceinline__ void kv_store(__nv_fp8_e4m3 *p, int64_t i, float v) {
    p[i].__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
}
