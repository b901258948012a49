// sampling.cu: logits post-processing and sampling on the GPU, so only the sampled ids cross to the host.
// Penalties and masks per row, then argmax (temperature 0) or: candidates sorted by (logit desc, id asc)
// with a stable segmented radix sort, top-k, softmax with temperature in f64, top-p, and a draw with the
// row's host-provided uniform. CPU twin: Sampler::process + Sampler::pick in src/sampling.rs.
#include "common.cuh"
#include <cub/cub.cuh>
#include <float.h>
#include <limits.h>

#define SAMPLE_THREADS 1024

__global__ void penalties_kernel(float *logits, const TlSampleParams *params, const int32_t *rep_off, const int32_t *rep_ids,
                                 const int32_t *gen_off, const int32_t *gen_ids, const int32_t *gen_counts,
                                 const int32_t *mask_off, const int32_t *mask_ids, int vocab) {
    const int row = blockIdx.x;
    const TlSampleParams p = params[row];
    float *l = logits + static_cast<int64_t>(row) * vocab;
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
}

__global__ void iota_kernel(int32_t *idx, int32_t *offsets, int rows, int vocab) {
    const int64_t total = static_cast<int64_t>(rows) * vocab;
    for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<int64_t>(gridDim.x) * blockDim.x)
        idx[i] = static_cast<int32_t>(i % vocab);
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i <= rows; i += gridDim.x * blockDim.x) offsets[i] = i * vocab;
}

// First index in [0, n) whose running sum of f(i) passes `threshold` (>= when `inclusive_eq`, else >);
// n - 1 when none does. Returns the sum up to and including that index in *sum_out.
template <typename F>
__device__ int block_find_cumsum(int n, double threshold, bool inclusive_eq, F f, double *sum_out) {
    typedef cub::BlockScan<double, SAMPLE_THREADS> Scan;
    __shared__ typename Scan::TempStorage tmp;
    __shared__ int found;
    __shared__ double found_sum;
    __syncthreads(); // a previous call may still be reading `found`
    if (threadIdx.x == 0) {
        found = INT_MAX;
        found_sum = 0.0;
    }
    __syncthreads();
    double carry = 0.0;
    for (int base = 0; base < n; base += SAMPLE_THREADS) {
        const int i = base + threadIdx.x;
        const double v = i < n ? f(i) : 0.0;
        double incl, agg;
        Scan(tmp).InclusiveSum(v, incl, agg);
        const double s = carry + incl;
        if (i < n && (inclusive_eq ? s >= threshold : s > threshold)) atomicMin(&found, i);
        __syncthreads();
        if (found != INT_MAX && i == found) found_sum = s;
        __syncthreads();
        if (found != INT_MAX) break;
        carry += agg;
    }
    const int r = found == INT_MAX ? n - 1 : found;
    *sum_out = found == INT_MAX ? carry : found_sum;
    return r;
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

__global__ void pick_kernel(int32_t *out_ids, const float *logits, const float *keys, const int32_t *idx,
                            const TlSampleParams *params, int vocab) {
    const int row = blockIdx.x;
    const TlSampleParams p = params[row];
    const float *l = logits + static_cast<int64_t>(row) * vocab;
    if (p.temperature == 0.f) {
        block_argmax(l, vocab, out_ids + row);
        return;
    }
    const float *k = keys + static_cast<int64_t>(row) * vocab;
    const int32_t *id = idx + static_cast<int64_t>(row) * vocab;
    __shared__ float sh[32];
    float cnt = 0.f;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) cnt += isfinite(k[i]) ? 1.f : 0.f;
    const int n_finite = static_cast<int>(block_sum(cnt, sh) + 0.5f);
    if (n_finite == 0) {
        block_argmax(l, vocab, out_ids + row);
        return;
    }
    // Finite values sort before -inf, so the candidates are the first n_finite sorted entries.
    const int keep = p.top_k > 0 ? min(p.top_k, n_finite) : n_finite;
    const float mx = k[0];
    const float T = p.temperature;
    auto q = [&](int i) { return exp(static_cast<double>((k[i] - mx) / T)); };
    double total;
    block_find_cumsum(keep, static_cast<double>(INFINITY), true, [&](int i) { return q(i); }, &total); // plain sum
    __syncthreads();
    int kept = keep;
    double t = 1.0;
    if (p.top_p < 1.f) {
        const int last = block_find_cumsum(keep, static_cast<double>(p.top_p), true, [&](int i) { return q(i) / total; }, &t);
        kept = last + 1;
        __syncthreads();
    }
    double unused;
    const int pick = block_find_cumsum(kept, p.u, false, [&](int i) { return q(i) / total / t; }, &unused);
    if (threadIdx.x == 0) out_ids[row] = id[pick];
}

static size_t align256(size_t b) { return (b + 255) & ~static_cast<size_t>(255); }

static size_t cub_temp_bytes(int rows, int vocab) {
    size_t bytes = 0;
    cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, bytes, static_cast<const float *>(nullptr), static_cast<float *>(nullptr),
                                                       static_cast<const int32_t *>(nullptr), static_cast<int32_t *>(nullptr),
                                                       static_cast<int64_t>(rows) * vocab, rows, static_cast<const int32_t *>(nullptr),
                                                       static_cast<const int32_t *>(nullptr));
    return bytes;
}

extern "C" int64_t tl_sample_scratch_bytes(int rows, int vocab) {
    if (rows <= 0 || vocab <= 0) return 0;
    const size_t n = static_cast<size_t>(rows) * vocab;
    return static_cast<int64_t>(align256(n * 4) * 3 + align256((rows + 1) * 4) + align256(cub_temp_bytes(rows, vocab)));
}

extern "C" int tl_sample(int32_t *out_ids, float *logits, const TlSampleParams *params, const int32_t *rep_off,
                         const int32_t *rep_ids, const int32_t *gen_off, const int32_t *gen_ids, const int32_t *gen_counts,
                         const int32_t *mask_off, const int32_t *mask_ids, void *scratch, int rows, int vocab, void *stream) {
    if (rows == 0) return 0;
    if (rows < 0 || vocab <= 0) return TL_ERR_ARGS;
    cudaStream_t st = TL_STREAM(stream);
    const size_t n = static_cast<size_t>(rows) * vocab;
    char *s = static_cast<char *>(scratch);
    float *keys = reinterpret_cast<float *>(s);
    int32_t *idx_in = reinterpret_cast<int32_t *>(s + align256(n * 4));
    int32_t *idx_out = reinterpret_cast<int32_t *>(s + 2 * align256(n * 4));
    int32_t *offsets = reinterpret_cast<int32_t *>(s + 3 * align256(n * 4));
    void *temp = s + 3 * align256(n * 4) + align256((rows + 1) * 4);
    size_t temp_bytes = cub_temp_bytes(rows, vocab);
    penalties_kernel<<<rows, 256, 0, st>>>(logits, params, rep_off, rep_ids, gen_off, gen_ids, gen_counts, mask_off, mask_ids, vocab);
    iota_kernel<<<256, 256, 0, st>>>(idx_in, offsets, rows, vocab);
    cudaError_t e = cub::DeviceSegmentedRadixSort::SortPairsDescending(temp, temp_bytes, logits, keys, idx_in, idx_out,
                                                                       static_cast<int64_t>(n), rows, offsets, offsets + 1, 0,
                                                                       sizeof(float) * 8, st);
    if (e != cudaSuccess) return static_cast<int>(e);
    pick_kernel<<<rows, SAMPLE_THREADS, 0, st>>>(out_ids, logits, keys, idx_out, params, vocab);
    return tl_launch_status();
}
