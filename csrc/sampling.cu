// sampling.cu: logits post-processing and sampling on the GPU, so only the sampled ids cross to the host.
// Penalties and masks per row, then argmax (temperature 0) or the CPU sampler's rule without sorting:
// candidates are ordered by the 64-bit key (ordered logit bits << 32 | ~id), so "the first i entries in
// (logit desc, id asc) order" is "keys >= some threshold", and top-k, top-p and the draw are each a binary
// search over thresholds with block-wide counts / f64 probability sums (64 steps each).
// The mask lists carry every ban the host derives from the token history it holds: banned words, EOS / stop ids
// before min_tokens, and no_repeat_ngram_size (src/sampling/batch.rs `lists`), so one masking pass covers them.
// CPU twin: Sampler::process + Sampler::pick in src/sampling.rs (same result up to f64 summation order).
#include "common.cuh"
#include <limits.h>

#define SAMPLE_THREADS 1024

__global__ void penalties_kernel(float *logits, const TlSampleParams *params, const int32_t *rep_off, const int32_t *rep_ids,
                                 const int32_t *gen_off, const int32_t *gen_ids, const int32_t *gen_counts,
                                 const int32_t *mask_off, const int32_t *mask_ids, const int32_t *bias_off,
                                 const int32_t *bias_ids, const int32_t *bias_bits, const int32_t *allow_off,
                                 const int32_t *allow_bits, int vocab) {
    const int row = blockIdx.x;
    const TlSampleParams p = params[row];
    float *l = logits + static_cast<int64_t>(row) * vocab;
    // Distinct ids per row: each thread adds to its own entries.
    for (int i = bias_off[row] + threadIdx.x; i < bias_off[row + 1]; i += blockDim.x) l[bias_ids[i]] += __int_as_float(bias_bits[i]);
    __syncthreads();
    if (p.repetition_penalty != 1.f) {
        for (int i = rep_off[row] + threadIdx.x; i < rep_off[row + 1]; i += blockDim.x) {
            const float v = l[rep_ids[i]];
            l[rep_ids[i]] = v > 0.f ? v / p.repetition_penalty : v * p.repetition_penalty;
        }
    }
    __syncthreads();
    if (p.presence_penalty != 0.f || p.frequency_penalty != 0.f) {
        for (int i = gen_off[row] + threadIdx.x; i < gen_off[row + 1]; i += blockDim.x)
            l[gen_ids[i]] -= p.presence_penalty + p.frequency_penalty * static_cast<float>(gen_counts[i]);
    }
    __syncthreads();
    for (int i = mask_off[row] + threadIdx.x; i < mask_off[row + 1]; i += blockDim.x) l[mask_ids[i]] = -INFINITY;
    // Structured output: a guided row keeps only the ids set in its bitmask.
    if (allow_off[row + 1] > allow_off[row]) {
        const uint32_t *bits = reinterpret_cast<const uint32_t *>(allow_bits + allow_off[row]);
        for (int i = threadIdx.x; i < vocab; i += blockDim.x)
            if (!((bits[i >> 5] >> (i & 31)) & 1u)) l[i] = -INFINITY;
    }
}

__device__ void block_argmax(const float *l, int vocab, int32_t *out) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    float best = -INFINITY;
    int idx = INT_MAX;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = l[i];
        if (v > best || (idx == INT_MAX && !(v < best))) {
            best = v;
            idx = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (ov > best || (ov == best && oi < idx)) {
            best = ov;
            idx = oi;
        }
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) {
        bv[warp] = best;
        bi[warp] = idx;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w)
            if (bv[w] > best || (bv[w] == best && bi[w] < idx)) {
                best = bv[w];
                idx = bi[w];
            }
        *out = idx == INT_MAX ? 0 : idx;
    }
}

__device__ __forceinline__ double block_sum_d(double v, double *sh) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = lane < nw ? sh[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Larger key = earlier in (logit desc, id asc) order; 0 for non-finite logits (never candidates).
__device__ __forceinline__ uint64_t sort_key(float v, int i) {
    if (!isfinite(v)) return 0;
    const uint32_t b = __float_as_uint(v);
    const uint32_t ord = (b & 0x80000000u) ? ~b : (b | 0x80000000u);
    return (static_cast<uint64_t>(ord) << 32) | (0xFFFFFFFFu - static_cast<uint32_t>(i));
}

// Sum of w(i) over entries with key >= kappa (count when q is null).
__device__ double mass_at(const float *l, const double *q, int vocab, uint64_t kappa, double *sh) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (sort_key(l[i], i) >= kappa) acc += q ? q[i] : 1.0;
    return block_sum_d(acc, sh);
}

// Largest kappa in [lo, max] with pred(mass_at(kappa)); pred(mass_at(lo)) must hold.
template <typename P>
__device__ uint64_t search_max(const float *l, const double *q, int vocab, uint64_t lo, P pred, double *sh) {
    uint64_t hi = ~static_cast<uint64_t>(0);
    while (lo < hi) {
        const uint64_t mid = lo + (hi - lo) / 2 + 1;
        if (pred(mass_at(l, q, vocab, mid, sh))) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

__global__ void pick_kernel(int32_t *out_ids, const float *logits, double *qbuf, const TlSampleParams *params, int vocab) {
    __shared__ double sh[32];
    __shared__ float shf[32];
    const int row = blockIdx.x;
    const TlSampleParams p = params[row];
    const float *l = logits + static_cast<int64_t>(row) * vocab;
    if (p.temperature == 0.f) {
        block_argmax(l, vocab, out_ids + row);
        return;
    }
    float cnt = 0.f, mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x)
        if (isfinite(l[i])) {
            cnt += 1.f;
            mx = fmaxf(mx, l[i]);
        }
    const double n_finite = block_sum_d(cnt, sh);
    mx = warp_max(mx);
    __syncthreads();
    if ((threadIdx.x & 31) == 0) shf[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = (threadIdx.x & 31) < static_cast<int>(blockDim.x >> 5) ? shf[threadIdx.x & 31] : -INFINITY;
    mx = warp_max(mx);
    if (n_finite < 0.5) {
        block_argmax(l, vocab, out_ids + row);
        return;
    }
    double *q = qbuf + static_cast<int64_t>(row) * vocab;
    const float T = p.temperature;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) q[i] = isfinite(l[i]) ? exp(static_cast<double>((l[i] - mx) / T)) : 0.0;
    __syncthreads();
    uint64_t k_top = 1;
    if (p.top_k > 0 && static_cast<double>(p.top_k) < n_finite) {
        const double k = static_cast<double>(p.top_k);
        k_top = search_max(l, nullptr, vocab, 1, [=](double c) { return c >= k; }, sh);
    }
    const double total = mass_at(l, q, vocab, k_top, sh);
    uint64_t k_p = k_top;
    if (p.top_p < 1.f) {
        const double target = static_cast<double>(p.top_p) * total;
        if (total >= target) k_p = search_max(l, q, vocab, k_top, [=](double m) { return m >= target; }, sh);
    }
    const double kept = mass_at(l, q, vocab, k_p, sh);
    const double target = p.u * kept;
    uint64_t pick = k_p;
    if (kept > target) pick = search_max(l, q, vocab, k_p, [=](double m) { return m > target; }, sh);
    if (threadIdx.x == 0) out_ids[row] = static_cast<int32_t>(0xFFFFFFFFu - static_cast<uint32_t>(pick & 0xFFFFFFFFu));
}

extern "C" int64_t tl_sample_scratch_bytes(int rows, int vocab) {
    if (rows <= 0 || vocab <= 0) return 0;
    return static_cast<int64_t>(rows) * vocab * static_cast<int64_t>(sizeof(double));
}

extern "C" int tl_sample(int32_t *out_ids, float *logits, const TlSampleParams *params, const int32_t *rep_off,
                         const int32_t *rep_ids, const int32_t *gen_off, const int32_t *gen_ids, const int32_t *gen_counts,
                         const int32_t *mask_off, const int32_t *mask_ids, const int32_t *bias_off, const int32_t *bias_ids,
                         const int32_t *bias_bits, const int32_t *allow_off, const int32_t *allow_bits, void *scratch,
                         int rows, int vocab, void *stream) {
    if (rows == 0) return 0;
    if (rows < 0 || vocab <= 0) return TL_ERR_ARGS;
    cudaStream_t st = TL_STREAM(stream);
    penalties_kernel<<<rows, 256, 0, st>>>(logits, params, rep_off, rep_ids, gen_off, gen_ids, gen_counts, mask_off, mask_ids,
                                           bias_off, bias_ids, bias_bits, allow_off, allow_bits, vocab);
    pick_kernel<<<rows, SAMPLE_THREADS, 0, st>>>(out_ids, logits, static_cast<double *>(scratch), params, vocab);
    return tl_launch_status();
}

// A row's max and the log of the f64 sum of exp(l - max), in every thread of the block: the log-softmax of l[i]
// is (l[i] - max) - log_sum. CPU twin: sampling::log_sum_exp.
__device__ void row_log_sum_exp(const float *l, int vocab, float *max_out, float *log_sum_out) {
    __shared__ double sh[32];
    __shared__ float shf[32];
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) mx = fmaxf(mx, l[i]);
    mx = warp_max(mx);
    if ((threadIdx.x & 31) == 0) shf[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = (threadIdx.x & 31) < static_cast<int>(blockDim.x >> 5) ? shf[threadIdx.x & 31] : -INFINITY;
    mx = warp_max(mx);
    double acc = 0.0;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) acc += exp(static_cast<double>(l[i] - mx));
    *max_out = mx;
    *log_sum_out = static_cast<float>(log(block_sum_d(acc, sh)));
}

// One block per row: l[id] - max - log(sum).
__global__ void token_logprob_kernel(float *lp, const float *logits, const int32_t *ids, int vocab) {
    const int row = blockIdx.x;
    const float *l = logits + static_cast<int64_t>(row) * vocab;
    float mx, log_sum;
    row_log_sum_exp(l, vocab, &mx, &log_sum);
    if (threadIdx.x == 0) lp[row] = (l[ids[row]] - mx) - log_sum;
}

extern "C" int tl_token_logprob(float *lp, const float *logits, const int32_t *ids, int rows, int vocab, void *stream) {
    if (rows == 0) return 0;
    if (rows < 0 || vocab <= 0) return TL_ERR_ARGS;
    token_logprob_kernel<<<rows, 256, 0, TL_STREAM(stream)>>>(lp, logits, ids, vocab);
    return tl_launch_status();
}

__device__ __forceinline__ uint64_t warp_max_u64(uint64_t v) {
    for (int o = 16; o > 0; o >>= 1) {
        const uint64_t w = __shfl_xor_sync(0xffffffffu, v, o);
        v = w > v ? w : v;
    }
    return v;
}

// One block per row: the row's log-sum-exp, then k passes, each taking the largest
// sort key below the previous pass's (keys are distinct, so each pass finds the next id in order).
__global__ void top_logprobs_kernel(int32_t *ids, float *lps, const float *logits, int vocab, int k) {
    __shared__ uint64_t shk[32];
    const int row = blockIdx.x;
    const float *l = logits + static_cast<int64_t>(row) * vocab;
    float mx, log_sum;
    row_log_sum_exp(l, vocab, &mx, &log_sum);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    uint64_t below = ~static_cast<uint64_t>(0);
    for (int j = 0; j < k; ++j) {
        uint64_t best = 0;
        for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
            const uint64_t key = sort_key(l[i], i);
            if (key < below && key > best) best = key;
        }
        best = warp_max_u64(best);
        __syncthreads();
        if (lane == 0) shk[warp] = best;
        __syncthreads();
        best = warp_max_u64(lane < nw ? shk[lane] : 0);
        below = best;
        if (threadIdx.x == 0) {
            const int64_t at = static_cast<int64_t>(row) * k + j;
            if (best == 0) {
                ids[at] = -1;
                lps[at] = -INFINITY;
            } else {
                const int id = static_cast<int>(0xFFFFFFFFu - static_cast<uint32_t>(best & 0xFFFFFFFFu));
                ids[at] = id;
                lps[at] = (l[id] - mx) - log_sum;
            }
        }
    }
}

extern "C" int tl_top_logprobs(int32_t *ids, float *lps, const float *logits, int rows, int vocab, int k, void *stream) {
    if (rows == 0 || k == 0) return 0;
    if (rows < 0 || vocab <= 0 || k < 0) return TL_ERR_ARGS;
    top_logprobs_kernel<<<rows, 256, 0, TL_STREAM(stream)>>>(ids, lps, logits, vocab, k);
    return tl_launch_status();
}
