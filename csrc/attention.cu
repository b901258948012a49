// attention.cu: causal attention over the paged KV cache, grouped-query aware. Token t of a sequence sees
// cached positions 0 ..= ctx - len + (t - start). Decode tokens use a split-K kernel (one block per token,
// head and 512-key split, plus a combine pass; with grouped-query heads one block per token, KV head and split,
// each K/V row read once for the whole group); prompt chunks use 16-row query tiles that stream 32-key K/V
// tiles through shared memory with an online softmax, so no score matrix is ever stored; or, by default, 64-row
// tiles on tensor cores (bf16 mma through nvcuda::wmma, sm_80+), the same online softmax in f32.
// CPU twin: CpuBackend::paged_attention (the f32 kernel within 1e-4; the tensor-core one within bf16's rounding).
#include "common.cuh"
#include <mma.h>

#define DEC_WARPS 4
#define PF_ROWS TL_PREFILL_ROWS // query rows per prefill block (ops.h: the host packs the tiles)
#define PF_WARPS 4      // each warp owns PF_ROWS / PF_WARPS rows
#define PF_KEYS 32      // keys per shared-memory tile (one per lane)

__device__ __forceinline__ int64_t slot_of(const int32_t *bt, int j, int bs) {
    return static_cast<int64_t>(bt[j / bs]) * bs + j % bs;
}

// Keys [kt, kt + keys) of the sequence's K and V (KV: f32 or bf16) into shared rows of ldk / ldv elements of T
// (f32 or bf16, kv_store's rounding), zeros past max_vis; every thread of the block takes part.
template <typename KV, typename T>
__device__ __forceinline__ void load_kv_tile(T *ks, int ldk, T *vs, int ldv, const KV *kc, const KV *vc,
                                             const TlAttnMeta &m, const int32_t *bt, int kt, int keys, int max_vis,
                                             int nkv, int kvh, int hd) {
    for (int idx = threadIdx.x; idx < keys * hd; idx += blockDim.x) {
        const int j = idx / hd, d = idx % hd, key = kt + j;
        float kv = 0.f, vv = 0.f;
        if (key < max_vis) {
            const int64_t off = (slot_of(bt, key, m.block_size) * nkv + kvh) * hd + d;
            kv = kv_load(kc, off);
            vv = kv_load(vc, off);
        }
        kv_store(ks, static_cast<int64_t>(j) * ldk + d, kv);
        kv_store(vs, static_cast<int64_t>(j) * ldv + d, vv);
    }
}

// One output value, also in bf16 where the step asks for it (m.out16: the next GEMM's input).
__device__ __forceinline__ void put_out(float *out, const TlAttnMeta &m, int64_t idx, float v) {
    out[idx] = v;
    if (m.out16) m.out16[idx] = f32_to_bf16_bits(v);
}

// Dimension d of a decode row's result for head h: out = a / L with one split, else the split's partial
// (a, and M and L once per row) for decode_combine_kernel.
__device__ __forceinline__ void decode_result(float *out, const TlAttnMeta &m, float *scratch, float a, float M, float L,
                                              int t, int i, int h, int d, int nh, int hd, int splits, int split) {
    if (splits == 1) {
        put_out(out, m, (static_cast<int64_t>(t) * nh + h) * hd + d, L > 0.f ? a / L : 0.f);
        return;
    }
    float *part = scratch + ((static_cast<int64_t>(i) * nh + h) * splits + split) * (hd + 2);
    part[d] = a;
    if (d == 0) {
        part[hd] = M;
        part[hd + 1] = L;
    }
}

__device__ __forceinline__ int visible_of(const TlAttnMeta &m, int s, int t) {
    return m.seq_ctx[s] - m.seq_len[s] + (t - m.seq_start[s]) + 1;
}

// grid (n_dec, nh, splits), DEC_WARPS warps. Lane owns dims lane + 32 e.
template <int VEC, typename KV>
__global__ void decode_kernel(float *out, const float *q, const KV *kc, const KV *vc, float *scratch,
                              TlAttnMeta m, int nh, int nkv, int hd, float scale) {
    extern __shared__ float sh[]; // [DEC_WARPS][hd] acc, then [DEC_WARPS] max, [DEC_WARPS] sum
    const int i = blockIdx.x, h = blockIdx.y, split = blockIdx.z;
    const int t = m.dec_tokens[i], s = m.tok_seq[t];
    const int visible = visible_of(m, s, t);
    const int kvh = h / (nh / nkv);
    const int begin = split * TL_DECODE_SPLIT;
    const int end = min(visible, begin + TL_DECODE_SPLIT);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t *bt = m.block_tables + m.seq_bt[s];
    const float *qh = q + (static_cast<int64_t>(t) * nh + h) * hd;
    float qr[VEC], acc[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        const int d = lane + 32 * e;
        qr[e] = d < hd ? qh[d] * scale : 0.f;
        acc[e] = 0.f;
    }
    float mx = -INFINITY, l = 0.f;
    for (int j = begin + warp; j < end; j += DEC_WARPS) {
        const int64_t off = (slot_of(bt, j, m.block_size) * nkv + kvh) * hd;
        float part = 0.f;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int d = lane + 32 * e;
            if (d < hd) part += qr[e] * kv_load(kc, off + d);
        }
        const float score = warp_sum(part);
        const float nm = fmaxf(mx, score);
        const float corr = __expf(mx - nm), p = __expf(score - nm);
        l = l * corr + p;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int d = lane + 32 * e;
            acc[e] = acc[e] * corr + (d < hd ? p * kv_load(vc, off + d) : 0.f);
        }
        mx = nm;
    }
    float *sh_acc = sh, *sh_m = sh + DEC_WARPS * hd, *sh_l = sh_m + DEC_WARPS;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
        const int d = lane + 32 * e;
        if (d < hd) sh_acc[warp * hd + d] = acc[e];
    }
    if (lane == 0) {
        sh_m[warp] = mx;
        sh_l[warp] = l;
    }
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < DEC_WARPS; ++w) M = fmaxf(M, sh_m[w]);
    float f[DEC_WARPS], L = 0.f;
    for (int w = 0; w < DEC_WARPS; ++w) {
        f[w] = sh_m[w] == -INFINITY ? 0.f : __expf(sh_m[w] - M);
        L += f[w] * sh_l[w];
    }
    const int splits = gridDim.z;
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int w = 0; w < DEC_WARPS; ++w) a += f[w] * sh_acc[w * hd + d];
        decode_result(out, m, scratch, a, M, L, t, i, h, d, nh, hd, splits, split);
    }
}

// GQA decode: grid (n_dec, nkv, splits), DEC_WARPS warps. One block serves the G query heads of a KV head, so
// each K and V row of the split is read once per block (not once per query head): a warp strides the keys, loads
// a row once (lane owns dims lane + 32 e) and updates all G heads' online softmax from it. Partials go to the
// same scratch layout as decode_kernel's, merged by decode_combine_kernel.
template <int VEC, int G, typename KV>
__global__ void decode_gqa_kernel(float *out, const float *q, const KV *kc, const KV *vc, float *scratch,
                                  TlAttnMeta m, int nh, int nkv, int hd, float scale) {
    extern __shared__ float sh[]; // [DEC_WARPS][G][hd] acc, then [DEC_WARPS][G] max, [DEC_WARPS][G] sum
    const int i = blockIdx.x, kvh = blockIdx.y, split = blockIdx.z;
    const int t = m.dec_tokens[i], s = m.tok_seq[t];
    const int visible = visible_of(m, s, t);
    const int begin = split * TL_DECODE_SPLIT;
    const int end = min(visible, begin + TL_DECODE_SPLIT);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int32_t *bt = m.block_tables + m.seq_bt[s];
    float qr[G][VEC], acc[G][VEC], mx[G], l[G];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float *qh = q + (static_cast<int64_t>(t) * nh + kvh * G + g) * hd;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int d = lane + 32 * e;
            qr[g][e] = d < hd ? qh[d] * scale : 0.f;
            acc[g][e] = 0.f;
        }
        mx[g] = -INFINITY;
        l[g] = 0.f;
    }
    for (int j = begin + warp; j < end; j += DEC_WARPS) {
        const int64_t off = (slot_of(bt, j, m.block_size) * nkv + kvh) * hd;
        float kr[VEC], vr[VEC];
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int d = lane + 32 * e;
            kr[e] = d < hd ? kv_load(kc, off + d) : 0.f;
            vr[e] = d < hd ? kv_load(vc, off + d) : 0.f;
        }
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float part = 0.f;
#pragma unroll
            for (int e = 0; e < VEC; ++e) part += qr[g][e] * kr[e];
            const float score = warp_sum(part);
            const float nm = fmaxf(mx[g], score);
            const float corr = __expf(mx[g] - nm), p = __expf(score - nm);
            l[g] = l[g] * corr + p;
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[g][e] = acc[g][e] * corr + p * vr[e];
            mx[g] = nm;
        }
    }
    float *sh_acc = sh, *sh_m = sh + DEC_WARPS * G * hd, *sh_l = sh_m + DEC_WARPS * G;
#pragma unroll
    for (int g = 0; g < G; ++g) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int d = lane + 32 * e;
            if (d < hd) sh_acc[(warp * G + g) * hd + d] = acc[g][e];
        }
        if (lane == 0) {
            sh_m[warp * G + g] = mx[g];
            sh_l[warp * G + g] = l[g];
        }
    }
    __syncthreads();
    const int splits = gridDim.z;
    for (int idx = threadIdx.x; idx < G * hd; idx += blockDim.x) {
        const int g = idx / hd, d = idx % hd, h = kvh * G + g;
        float M = -INFINITY;
        for (int w = 0; w < DEC_WARPS; ++w) M = fmaxf(M, sh_m[w * G + g]);
        float a = 0.f, L = 0.f;
        for (int w = 0; w < DEC_WARPS; ++w) {
            const float mw = sh_m[w * G + g];
            const float f = mw == -INFINITY ? 0.f : __expf(mw - M);
            L += f * sh_l[w * G + g];
            a += f * sh_acc[(w * G + g) * hd + d];
        }
        decode_result(out, m, scratch, a, M, L, t, i, h, d, nh, hd, splits, split);
    }
}

// The GQA decode kernel for this head size and group, when one is instantiated (groups 2, 4, 8; head_dim <= 128).
template <int VEC, typename KV>
static bool launch_decode_gqa(float *out, const float *q, const KV *kc, const KV *vc, float *scratch,
                              const TlAttnMeta &m, int nh, int nkv, int hd, float scale, cudaStream_t st) {
    if constexpr (VEC > 4) {
        return false;
    } else {
        const int g = nh / nkv;
        const dim3 grid(m.n_dec, nkv, m.dec_splits);
        const size_t smem = (DEC_WARPS * g * hd + 2 * DEC_WARPS * g) * sizeof(float);
        switch (g) {
        case 2: decode_gqa_kernel<VEC, 2, KV><<<grid, DEC_WARPS * 32, smem, st>>>(out, q, kc, vc, scratch, m, nh, nkv, hd, scale); return true;
        case 4: decode_gqa_kernel<VEC, 4, KV><<<grid, DEC_WARPS * 32, smem, st>>>(out, q, kc, vc, scratch, m, nh, nkv, hd, scale); return true;
        case 8: decode_gqa_kernel<VEC, 8, KV><<<grid, DEC_WARPS * 32, smem, st>>>(out, q, kc, vc, scratch, m, nh, nkv, hd, scale); return true;
        default: return false;
        }
    }
}

// grid (n_dec, nh): merges the splits' (acc, max, sum) partials.
__global__ void decode_combine_kernel(float *out, const float *scratch, TlAttnMeta m, int nh, int hd, int splits) {
    const int i = blockIdx.x, h = blockIdx.y;
    const int t = m.dec_tokens[i];
    const float *base = scratch + (static_cast<int64_t>(i) * nh + h) * splits * (hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < splits; ++s) M = fmaxf(M, base[s * (hd + 2) + hd]);
    float L = 0.f;
    for (int s = 0; s < splits; ++s) {
        const float ms = base[s * (hd + 2) + hd];
        if (ms != -INFINITY) L += __expf(ms - M) * base[s * (hd + 2) + hd + 1];
    }
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.f;
        for (int s = 0; s < splits; ++s) {
            const float ms = base[s * (hd + 2) + hd];
            if (ms != -INFINITY) a += __expf(ms - M) * base[s * (hd + 2) + d];
        }
        put_out(out, m, (static_cast<int64_t>(t) * nh + h) * hd + d, L > 0.f ? a / L : 0.f);
    }
}

// The query tile a prefill block serves (blockIdx.x: tile of up to `tile_rows` rows, blockIdx.y: query head h):
// its sequence s, the tile's first row r0 in the chunk, the chunk's length, first token and context, the rows it
// takes, the KV head and the sequence's block table.
struct PrefillTile {
    int s, r0, h, len, start, ctx, rows, kvh;
    const int32_t *bt;
};

__device__ __forceinline__ PrefillTile prefill_tile(const TlAttnMeta &m, int tile_rows, int nh, int nkv) {
    const int s = m.tiles[2 * blockIdx.x], r0 = m.tiles[2 * blockIdx.x + 1], h = blockIdx.y;
    const int len = m.seq_len[s];
    return PrefillTile{s, r0, h, len, m.seq_start[s], m.seq_ctx[s], min(tile_rows, len - r0), h / (nh / nkv),
                       m.block_tables + m.seq_bt[s]};
}

// grid (n_tiles, nh), PF_WARPS warps. Shared: q [PF_ROWS][hd], k [PF_KEYS][hd + 1], v [PF_KEYS][hd].
template <int VEC, typename KV>
__global__ void prefill_kernel(float *out, const float *q, const KV *kc, const KV *vc, TlAttnMeta m,
                               int nh, int nkv, int hd, float scale) {
    extern __shared__ float sh[];
    constexpr int RPW = PF_ROWS / PF_WARPS;
    const auto [s, r0, h, len, start, ctx, rows, kvh, bt] = prefill_tile(m, PF_ROWS, nh, nkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float *qs = sh, *ks = qs + PF_ROWS * hd, *vs = ks + PF_KEYS * (hd + 1);
    for (int idx = threadIdx.x; idx < PF_ROWS * hd; idx += blockDim.x) {
        const int r = idx / hd, d = idx % hd;
        qs[idx] = r < rows ? q[(static_cast<int64_t>(start + r0 + r) * nh + h) * hd + d] * scale : 0.f;
    }
    float mx[RPW], l[RPW], acc[RPW][VEC];
    int vis[RPW];
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        mx[rr] = -INFINITY;
        l[rr] = 0.f;
        vis[rr] = ctx - len + r0 + warp * RPW + rr + 1;
#pragma unroll
        for (int e = 0; e < VEC; ++e) acc[rr][e] = 0.f;
    }
    const int max_vis = ctx - len + r0 + rows;
    for (int kt = 0; kt < max_vis; kt += PF_KEYS) {
        __syncthreads();
        load_kv_tile(ks, hd + 1, vs, hd, kc, vc, m, bt, kt, PF_KEYS, max_vis, nkv, kvh, hd);
        __syncthreads();
        // Scores of this lane's key against the warp's RPW rows: one K load serves all rows.
        float sc[RPW], p[RPW];
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) sc[rr] = 0.f;
        const float *krow = ks + lane * (hd + 1), *qw = qs + warp * RPW * hd;
        for (int d = 0; d < hd; ++d) {
            const float kd = krow[d];
#pragma unroll
            for (int rr = 0; rr < RPW; ++rr) sc[rr] += qw[rr * hd + d] * kd;
        }
#pragma unroll
        for (int rr = 0; rr < RPW; ++rr) {
            p[rr] = 0.f;
            if (warp * RPW + rr >= rows || kt >= vis[rr]) continue; // warp-uniform; p stays 0
            const float score = kt + lane < vis[rr] ? sc[rr] : -INFINITY;
            const float nm = fmaxf(mx[rr], warp_max(score));
            p[rr] = score == -INFINITY ? 0.f : __expf(score - nm);
            const float corr = __expf(mx[rr] - nm);
            l[rr] = l[rr] * corr + warp_sum(p[rr]);
#pragma unroll
            for (int e = 0; e < VEC; ++e) acc[rr][e] *= corr;
            mx[rr] = nm;
        }
        // P·V: one V load serves all rows; masked keys and finished rows carry p = 0.
        const int nkeys = min(PF_KEYS, max_vis - kt);
        for (int j = 0; j < nkeys; ++j) {
            float pj[RPW];
#pragma unroll
            for (int rr = 0; rr < RPW; ++rr) pj[rr] = __shfl_sync(0xffffffffu, p[rr], j);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const int d = lane + 32 * e;
                const float vv = d < hd ? vs[j * hd + d] : 0.f;
#pragma unroll
                for (int rr = 0; rr < RPW; ++rr) acc[rr][e] += pj[rr] * vv;
            }
        }
    }
#pragma unroll
    for (int rr = 0; rr < RPW; ++rr) {
        const int row = warp * RPW + rr;
        if (row >= rows) continue;
        const int64_t o = (static_cast<int64_t>(start + r0 + row) * nh + h) * hd;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            const int d = lane + 32 * e;
            if (d < hd) put_out(out, m, o + d, l[rr] > 0.f ? acc[rr][e] / l[rr] : 0.f);
        }
    }
}

// ---- prompt chunks on tensor cores --------------------------------------------------------------------------
// grid (n_tiles, nh), TC_WARPS warps; warp w owns query rows [16 w, 16 w + 16) of the 64-row tile. Per 64-key
// tile: K and V (f32 cache) rounded to bf16 into shared memory; each warp computes S = Q Kᵀ (bf16 mma, f32
// accumulate) into its shared S, takes the online softmax in f32 (two lanes per row), writes P rounded to bf16,
// rescales its f32 O rows and accumulates O += P V with mma. Q is scaled by 1/sqrt(hd) before its rounding; the
// row sums l are of the f32 probabilities. Shared (bytes): Q, K, V bf16 [64][hd + 8] each, S f32 [4][16][72],
// P bf16 [4][16][72], O f32 [4][16][hd + 4], m and l f32 [64] each: 107 KB at hd 128.
#define TC_WARPS 4
#define TC_ROWS TL_PREFILL_ROWS_TC
#define TC_KEYS 64
#define TC_LDS (TC_KEYS + 8)

static size_t prefill_tc_smem(int hd) {
    const size_t ldq = hd + 8, ldo = hd + 4;
    return 3 * TC_ROWS * ldq * sizeof(__nv_bfloat16) + TC_WARPS * 16 * TC_LDS * sizeof(float) +
           TC_WARPS * 16 * TC_LDS * sizeof(__nv_bfloat16) + TC_WARPS * 16 * ldo * sizeof(float) + 2 * TC_ROWS * sizeof(float);
}

template <typename KV>
__global__ void __launch_bounds__(TC_WARPS * 32) prefill_tc_kernel(float *out, const float *q, const KV *kc,
                                                                   const KV *vc, TlAttnMeta m, int nh, int nkv,
                                                                   int hd, float scale) {
    using namespace nvcuda;
    extern __shared__ __align__(128) unsigned char tc_sh[];
    const auto [s, r0, h, len, start, ctx, rows, kvh, bt] = prefill_tile(m, TC_ROWS, nh, nkv);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int ldq = hd + 8, ldo = hd + 4;
    // Every region's size is a multiple of 32 bytes (hd a multiple of 16), as wmma's pointers need.
    __nv_bfloat16 *qs = reinterpret_cast<__nv_bfloat16 *>(tc_sh);
    __nv_bfloat16 *ks = qs + TC_ROWS * ldq, *vs = ks + TC_KEYS * ldq;
    float *ss = reinterpret_cast<float *>(vs + TC_KEYS * ldq);
    __nv_bfloat16 *ps = reinterpret_cast<__nv_bfloat16 *>(ss + TC_WARPS * 16 * TC_LDS);
    float *os = reinterpret_cast<float *>(ps + TC_WARPS * 16 * TC_LDS);
    float *mrow = os + TC_WARPS * 16 * ldo, *lrow = mrow + TC_ROWS;
    for (int idx = threadIdx.x; idx < TC_ROWS * hd; idx += blockDim.x) {
        const int r = idx / hd, d = idx % hd;
        const float v = r < rows ? q[(static_cast<int64_t>(start + r0 + r) * nh + h) * hd + d] * scale : 0.f;
        qs[r * ldq + d] = __float2bfloat16(v);
    }
    for (int idx = threadIdx.x; idx < TC_WARPS * 16 * ldo; idx += blockDim.x) os[idx] = 0.f;
    for (int r = threadIdx.x; r < TC_ROWS; r += blockDim.x) {
        mrow[r] = -INFINITY;
        lrow[r] = 0.f;
    }
    float *sw = ss + warp * 16 * TC_LDS, *ow = os + warp * 16 * ldo;
    __nv_bfloat16 *pw = ps + warp * 16 * TC_LDS;
    const __nv_bfloat16 *qw = qs + warp * 16 * ldq;
    // The warp's rows: the first sees keys below first_vis, the last valid one below last_vis.
    const int w_rows = min(16, rows - warp * 16);
    const int first_vis = ctx - len + r0 + warp * 16 + 1, last_vis = first_vis + w_rows - 1;
    // Softmax lanes: row r = lane / 2 of the warp, keys [32 half, 32 half + 32) of the tile.
    const int r = lane >> 1, half = lane & 1, row = warp * 16 + r;
    const int vis = ctx - len + r0 + row + 1; // keys j < vis are visible to this row
    const bool valid = row < rows;
    const int max_vis = ctx - len + r0 + rows;
    for (int kt = 0; kt < max_vis; kt += TC_KEYS) {
        __syncthreads();
        load_kv_tile(ks, ldq, vs, ldq, kc, vc, m, bt, kt, TC_KEYS, max_vis, nkv, kvh, hd);
        __syncthreads();
        if (w_rows <= 0 || kt >= last_vis) continue; // warp-uniform: nothing of this tile is visible to the warp
        // S = Q Kᵀ: K stored [key][d] is Kᵀ in column-major.
        for (int nb = 0; nb < TC_KEYS / 16; ++nb) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
            wmma::fill_fragment(c, 0.f);
            for (int kk = 0; kk < hd; kk += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
                wmma::load_matrix_sync(a, qw + kk, ldq);
                wmma::load_matrix_sync(b, ks + nb * 16 * ldq + kk, ldq);
                wmma::mma_sync(c, a, b, c);
            }
            wmma::store_matrix_sync(sw + nb * 16, c, TC_LDS, wmma::mem_row_major);
        }
        __syncwarp();
        float tmax = -INFINITY;
        for (int c = half * 32; c < half * 32 + 32; ++c) {
            if (valid && kt + c < vis) tmax = fmaxf(tmax, sw[r * TC_LDS + c]);
        }
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        const float m_old = mrow[row], m_new = fmaxf(m_old, tmax);
        const float corr = m_new == -INFINITY ? 0.f : __expf(m_old - m_new);
        float sum = 0.f;
        for (int c = half * 32; c < half * 32 + 32; ++c) {
            const bool on = valid && kt + c < vis;
            const float p = on ? __expf(sw[r * TC_LDS + c] - m_new) : 0.f;
            pw[r * TC_LDS + c] = __float2bfloat16(p);
            sum += p;
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        for (int d = half * (hd / 2); d < (half + 1) * (hd / 2); ++d) ow[r * ldo + d] *= corr;
        __syncwarp();
        if (half == 0) {
            mrow[row] = m_new;
            lrow[row] = lrow[row] * corr + sum;
        }
        // O += P V: V stored [key][d] is row-major.
        for (int db = 0; db < hd; db += 16) {
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> o;
            wmma::load_matrix_sync(o, ow + db, ldo, wmma::mem_row_major);
            for (int kb = 0; kb < TC_KEYS; kb += 16) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> b;
                wmma::load_matrix_sync(a, pw + kb, TC_LDS);
                wmma::load_matrix_sync(b, vs + kb * ldq + db, ldq);
                wmma::mma_sync(o, a, b, o);
            }
            wmma::store_matrix_sync(ow + db, o, ldo, wmma::mem_row_major);
        }
        __syncwarp();
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < rows * hd; idx += blockDim.x) {
        const int rr = idx / hd, d = idx % hd;
        const float l = lrow[rr];
        put_out(out, m, (static_cast<int64_t>(start + r0 + rr) * nh + h) * hd + d, l > 0.f ? os[rr * ldo + d] / l : 0.f);
    }
}

template <int VEC, typename KV>
static int launch(float *out, const float *q, const KV *kc, const KV *vc, float *scratch, const TlAttnMeta &m,
                  int nh, int nkv, int hd, cudaStream_t st) {
    const float scale = 1.f / sqrtf(static_cast<float>(hd));
    if (m.n_dec > 0) {
        if (!launch_decode_gqa<VEC, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, scale, st)) {
            dim3 grid(m.n_dec, nh, m.dec_splits);
            const size_t smem = (DEC_WARPS * hd + 2 * DEC_WARPS) * sizeof(float);
            decode_kernel<VEC, KV><<<grid, DEC_WARPS * 32, smem, st>>>(out, q, kc, vc, scratch, m, nh, nkv, hd, scale);
        }
        if (m.dec_splits > 1) decode_combine_kernel<<<dim3(m.n_dec, nh), 128, 0, st>>>(out, scratch, m, nh, hd, m.dec_splits);
    }
    if (m.n_tiles > 0 && m.tile_rows == TC_ROWS) {
        const size_t smem = prefill_tc_smem(hd);
        cudaError_t e = cudaFuncSetAttribute(prefill_tc_kernel<KV>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        if (e != cudaSuccess) return static_cast<int>(e);
        prefill_tc_kernel<KV><<<dim3(m.n_tiles, nh), TC_WARPS * 32, smem, st>>>(out, q, kc, vc, m, nh, nkv, hd, scale);
    } else if (m.n_tiles > 0) {
        const size_t smem = (PF_ROWS * hd + PF_KEYS * (hd + 1) + PF_KEYS * hd) * sizeof(float);
        if (smem > 48 * 1024) {
            cudaError_t e = cudaFuncSetAttribute(prefill_kernel<VEC, KV>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
            if (e != cudaSuccess) return static_cast<int>(e);
        }
        prefill_kernel<VEC, KV><<<dim3(m.n_tiles, nh), PF_WARPS * 32, smem, st>>>(out, q, kc, vc, m, nh, nkv, hd, scale);
    }
    return tl_launch_status();
}

template <typename KV>
static int dispatch(float *out, const float *q, const KV *kc, const KV *vc, float *scratch, const TlAttnMeta &m, int nh,
                    int nkv, int hd, cudaStream_t st) {
    switch ((hd + 31) / 32) {
    case 1: return launch<1, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    case 2: return launch<2, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    case 3: return launch<3, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    case 4: return launch<4, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    case 5: return launch<5, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    case 6: return launch<6, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    case 7: return launch<7, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    default: return launch<8, KV>(out, q, kc, vc, scratch, m, nh, nkv, hd, st);
    }
}

extern "C" int tl_paged_attention(float *out, const float *q, const void *k_cache, const void *v_cache, float *scratch,
                                  const TlAttnMeta *meta, int nh, int nkv, int hd, int kv_dtype, void *stream) {
    if (!meta || nh <= 0 || nkv <= 0 || nh % nkv != 0 || hd <= 0 || hd > TL_MAX_HEAD_DIM || meta->dec_splits < 1 || meta->block_size <= 0)
        return TL_ERR_ARGS;
    if (meta->n_tiles > 0 && !(meta->tile_rows == PF_ROWS || (meta->tile_rows == TC_ROWS && hd % 16 == 0)))
        return TL_ERR_ARGS;
    if (kv_dtype < 0 || kv_dtype > 2) return TL_ERR_ARGS;
    const TlAttnMeta m = *meta;
    cudaStream_t st = TL_STREAM(stream);
    if (kv_dtype == 2) {
        return dispatch(out, q, static_cast<const __nv_fp8_e4m3 *>(k_cache), static_cast<const __nv_fp8_e4m3 *>(v_cache),
                        scratch, m, nh, nkv, hd, st);
    }
    if (kv_dtype == 1) {
        return dispatch(out, q, static_cast<const __nv_bfloat16 *>(k_cache), static_cast<const __nv_bfloat16 *>(v_cache),
                        scratch, m, nh, nkv, hd, st);
    }
    return dispatch(out, q, static_cast<const float *>(k_cache), static_cast<const float *>(v_cache), scratch, m, nh, nkv,
                    hd, st);
}
