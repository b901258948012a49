/* ops.h: the C ABI of the CUDA kernels (csrc/*.cu). Every launcher takes raw device pointers and a
 * `cudaStream_t` passed as `void*`, enqueues its kernels and returns a status: 0 on success, a cudaError_t
 * value from the launch, or TL_ERR_ARGS for arguments the kernels cannot handle. Shapes are row-major;
 * f32 activations, bf16 weights (stored as uint16_t bit patterns), int32 metadata. Plain C: bindgen reads it. */
#ifndef TL_OPS_H
#define TL_OPS_H
#include <stdint.h>
#ifdef __cplusplus
extern "C" {
#endif

/* Returned for arguments a kernel cannot handle (zero or oversized dimensions). */
#define TL_ERR_ARGS 100000
/* Largest head_dim the attention kernels support. */
#define TL_MAX_HEAD_DIM 256
/* Keys per split of the decode attention. */
#define TL_DECODE_SPLIT 512
/* Query rows per tile of the f32 (CUDA-core) prefill attention (the host packs one tile per TL_PREFILL_ROWS prompt
 * rows; TlAttnMeta.tile_rows says which packing a step has). */
#define TL_PREFILL_ROWS 16
/* Query rows per tile of the tensor-core (bf16 mma) prefill attention: head_dim a multiple of 16. */
#define TL_PREFILL_ROWS_TC 64

/* Human-readable name of a status returned by a launcher. */
const char *tl_status_string(int status);

/* out[i, :] = table[ids[i], :] widened to f32. */
int tl_embedding(float *out,              /* [n, h] */
                 const uint16_t *table,   /* [vocab, h] bf16 */
                 const int32_t *ids,      /* [n], each < vocab (checked on the host) */
                 int n, int h, void *stream);

/* out = x / sqrt(mean(x^2) + eps) * w, row by row. */
int tl_rms_norm(float *out,       /* [n, h] */
                const float *x,   /* [n, h] */
                const float *w,   /* [h] */
                int n, int h, float eps, void *stream);

/* residual += x; out = rms_norm(residual) * w. */
int tl_add_rms_norm(float *residual, /* [n, h], updated in place */
                    const float *x,  /* [n, h] */
                    float *out,      /* [n, h] */
                    const float *w,  /* [h] */
                    int n, int h, float eps, void *stream);

/* tl_rms_norm (residual null) or tl_add_rms_norm (residual given), the output rows also quantized to E4M3 with one
 * scale each, as tl_quantize_fp8_rows of `out` would: the next FP8 GEMM's input without a kernel of its own. */
int tl_rms_norm_fp8(float *out,        /* [n, h] */
                    float *residual,   /* [n, h], updated in place; or null */
                    uint8_t *codes,    /* [n, h] E4M3 codes of out */
                    float *scales,     /* [n] */
                    const float *x,    /* [n, h] */
                    const float *w,    /* [h] */
                    int n, int h, float eps, void *stream);

/* tl_rms_norm (residual null) or tl_add_rms_norm (residual given), the output rows also written as bf16 (round to
 * nearest even, as tl_f32_to_bf16 of `out` would): the next bf16 GEMM's input without a kernel of its own. */
int tl_rms_norm_bf16(float *out,        /* [n, h] */
                     float *residual,   /* [n, h], updated in place; or null */
                     uint16_t *out16,   /* [n, h] bf16 of out */
                     const float *x,    /* [n, h] */
                     const float *w,    /* [h] */
                     int n, int h, float eps, void *stream);

/* out[t, j] = silu(gate_up[t, j]) * gate_up[t, f + j] (each row's gate, then its up: the fused gate/up GEMM's
 * output); with out16, out also written as bf16 (as tl_f32_to_bf16 of `out` would), the down GEMM's input. */
int tl_silu_mul(float *out,           /* [n, f] */
                uint16_t *out16,      /* [n, f] bf16 of out; or null */
                const float *gate_up, /* [n, 2 f] */
                int64_t n, int64_t f, void *stream);

/* tl_silu_mul without out16, the output rows also quantized to E4M3 with one scale each, as
 * tl_quantize_fp8_rows of `out` would: the down GEMM's FP8 input without a kernel of its own. */
int tl_silu_mul_fp8(float *out,           /* [n, f] */
                    uint8_t *codes,       /* [n, f] E4M3 codes of out */
                    float *scales,        /* [n] */
                    const float *gate_up, /* [n, 2 f] */
                    int n, int f, void *stream);

/* out[i, :] = x[rows[i], :]. */
int tl_gather_rows(float *out,          /* [r, h] */
                   const float *x,      /* [*, h] */
                   const int32_t *rows, /* [r] */
                   int r, int h, void *stream);

/* dst = bf16(src), round to nearest even (GEMM inputs). */
int tl_f32_to_bf16(uint16_t *dst,   /* [len] */
                   const float *src, /* [len] */
                   int64_t len, void *stream);

/* Split-halves RoPE of qkv's q into q and of its k into the paged caches at `slots`, with v beside it, as kv_dtype
 * says: 0 f32, 1 bf16 (round to nearest even), 2 E4M3 with scale 1 (nearest even, saturating to +-448). */
int tl_rope_write_kv(float *q,               /* [n, nh * hd]: the rotated q */
                     const float *qkv,       /* [n, nh * hd + 2 nkv * hd]: each row's q, k, v */
                     void *k_cache,          /* [num_slots, nkv, hd] of kv_dtype (num_slots = blocks * block_size) */
                     void *v_cache,          /* [num_slots, nkv, hd] of kv_dtype */
                     const int32_t *positions, /* [n] */
                     const int32_t *slots,   /* [n], each < num_slots (checked on the host) */
                     int n, int nh, int nkv, int hd, float theta, float rope_scale, int kv_dtype, void *stream);

/* Per-step attention metadata on the device (see src/backend/cuda/meta.rs, which builds it). */
typedef struct TlAttnMeta {
    const int32_t *tok_seq;      /* [n_tokens]: sequence of each token */
    const int32_t *seq_start;    /* [n_seqs]: first token of the sequence in the step */
    const int32_t *seq_len;      /* [n_seqs]: new tokens of the sequence this step */
    const int32_t *seq_ctx;      /* [n_seqs]: cached tokens once this step is written */
    const int32_t *seq_bt;       /* [n_seqs]: offset of the sequence's block table in block_tables */
    const int32_t *block_tables; /* [sum of table lengths]: physical block ids */
    const int32_t *dec_tokens;   /* [n_dec]: tokens handled by the decode kernel */
    const int32_t *tiles;        /* [n_tiles, 2]: (sequence, first row) tiles of the prefill kernel */
    int n_dec;
    int n_tiles;
    int dec_splits;  /* splits along the context for the decode kernel (>= 1) */
    int block_size;
    int tile_rows;   /* rows per prefill tile: TL_PREFILL_ROWS (f32 kernel) or TL_PREFILL_ROWS_TC (tensor cores) */
    uint16_t *out16; /* [n, nh * hd]: the output also in bf16 (the wo GEMM's input), or null */
} TlAttnMeta;

/* Causal attention of each new token over its sequence's cached keys, grouped-query aware.
 * Decode tokens: one block per (token, head, split), or per (token, KV head, split) serving the query group
 * (groups 2, 4, 8 with head_dim <= 128), plus a combine pass; prefill: with tile_rows
 * TL_PREFILL_ROWS, tiles of 16 query rows with 32-key f32 tiles through shared memory and an online softmax (no
 * score matrix); with TL_PREFILL_ROWS_TC, tiles of 64 rows on tensor cores (q, k, v and the probabilities rounded
 * to bf16, f32 accumulation and softmax). */
int tl_paged_attention(float *out,            /* [n, nh * hd] */
                       const float *q,        /* [n, nh * hd] */
                       const void *k_cache,   /* [num_slots, nkv, hd] of kv_dtype (0 f32, 1 bf16, 2 E4M3) */
                       const void *v_cache,   /* [num_slots, nkv, hd] of kv_dtype */
                       float *scratch,        /* [n_dec, nh, dec_splits, hd + 2] when dec_splits > 1, else unused */
                       const TlAttnMeta *meta, /* host struct holding device pointers */
                       int nh, int nkv, int hd, int kv_dtype, void *stream);

/* Logits processing and sampling, one row per sequence, only the ids cross back to the host.
 * Penalties: for each row, ids listed in bias_ids first get their bias added (embedding bias by words), then
 * ids listed in rep_ids get HF repetition penalty; gen_ids/gen_counts get
 * presence + frequency * count subtracted; mask_ids are set to -inf (bans, EOS before min tokens); a row with
 * an allow bitmask (structured output) has every id outside it set to -inf.
 * Then temperature == 0: argmax (lowest index on ties); else candidates sorted by (logit desc, id asc),
 * top_k (0 = off), softmax with temperature in f64, top_p (1 = off), sampled with the row's uniform u. */
typedef struct TlSampleParams {
    float temperature;
    int top_k;
    float top_p;
    float repetition_penalty;
    float presence_penalty;
    float frequency_penalty;
    double u; /* uniform in [0, 1) drawn on the host from the request's seeded generator */
} TlSampleParams;

/* Bytes of device scratch tl_sample needs for `rows` rows of `vocab`. */
int64_t tl_sample_scratch_bytes(int rows, int vocab);

int tl_sample(int32_t *out_ids,                /* [rows] */
              float *logits,                   /* [rows, vocab], processed in place */
              const TlSampleParams *params,    /* [rows] (device) */
              const int32_t *rep_off,          /* [rows + 1] offsets into rep_ids */
              const int32_t *rep_ids,          /* [*] distinct ids per row */
              const int32_t *gen_off,          /* [rows + 1] offsets into gen_ids / gen_counts */
              const int32_t *gen_ids,          /* [*] distinct ids per row */
              const int32_t *gen_counts,       /* [*] */
              const int32_t *mask_off,         /* [rows + 1] offsets into mask_ids */
              const int32_t *mask_ids,         /* [*] */
              const int32_t *bias_off,         /* [rows + 1] offsets into bias_ids / bias_bits */
              const int32_t *bias_ids,         /* [*] */
              const int32_t *bias_bits,        /* [*] f32 bias of each id, as its bit pattern */
              const int32_t *allow_off,        /* [rows + 1] offsets into allow_bits: 0 or ceil(vocab / 32) words */
              const int32_t *allow_bits,       /* [*] guided rows' allowed ids, bit i % 32 of word i / 32 */
              void *scratch,                   /* tl_sample_scratch_bytes(rows, vocab) bytes */
              int rows, int vocab, void *stream);

/* Reassembles vocabulary-split logits gathered rank-major: rank k of `world` owns the columns
 * [k * base + min(k, extra), +base + (k < extra)) with base = vocab / world, extra = vocab % world, stored as
 * [rows, w_k] at the start of its slot of rows * w_max floats (w_max = ceil(vocab / world)). Keeps columns
 * [0, width). CPU twin: CpuBackend::unshard_vocab. */
int tl_unshard_vocab(float *out,         /* [rows, width] */
                     const float *parts, /* [world, rows * w_max] */
                     int rows, int vocab, int world, int width, void *stream);

/* lp[i] = logits[i, ids[i]] - logsumexp(logits[i, :]) (f64 sum): the log-probability of the sampled token
 * under the unprocessed logits. CPU twin: sampling::logprob_of. */
int tl_token_logprob(float *lp,           /* [rows] */
                     const float *logits, /* [rows, vocab] */
                     const int32_t *ids,  /* [rows], each < vocab */
                     int rows, int vocab, void *stream);

/* The k most likely ids of each row of unprocessed logits in (logit desc, id asc) order, with their
 * log-probabilities (logit - logsumexp, f64 sum); a row with fewer than k finite logits ends in ids -1 with
 * -inf. k search passes over the row, no sort and no copy to the host. CPU twin: sampling::top_logprobs. */
int tl_top_logprobs(int32_t *ids,         /* [rows, k] */
                    float *lps,           /* [rows, k] */
                    const float *logits,  /* [rows, vocab] */
                    int rows, int vocab, int k, void *stream);

/* FP8 (E4M3, the e4m3fn form) rows, one scale each: scales[i] = max|x[i, :]| / 448 (1 for a row of zeros),
 * out[i, j] = e4m3(x[i, j] / scales[i]), round to nearest even, saturating to +-448. Weights at load (per output
 * channel), activations before each FP8 GEMM (per token). CPU twin: fp8::Fp8Rows::quantize. */
int tl_quantize_fp8_rows(uint8_t *out,     /* [n, k] E4M3 codes */
                         float *scales,    /* [n] */
                         const float *x,   /* [n, k] */
                         int n, int k, void *stream);

/* tl_quantize_fp8_rows of bf16 rows (weights of a bf16 checkpoint). */
int tl_quantize_fp8_rows_bf16(uint8_t *out,       /* [n, k] E4M3 codes */
                              float *scales,      /* [n] */
                              const uint16_t *x,  /* [n, k] bf16 */
                              int n, int k, void *stream);

/* out[t, j] = out[t, j] * sx[t] * sw[j]: the scales after an FP8 GEMM's f32 accumulation. */
int tl_fp8_scale_out(float *out,        /* [n, m] */
                     const float *sx,   /* [n] activation scales */
                     const float *sw,   /* [m] weight scales */
                     int n, int m, void *stream);

/* out[t, j] = (sum over c in order of e4m3(xq[t, c]) * e4m3(wq[j, c])) * sx[t] * sw[j], one thread per output:
 * the FP8 GEMM for shapes cuBLASLt's FP8 kernels refuse. CPU twin (bit for bit): fp8::gemm_fp8. */
int tl_gemm_fp8_plain(float *out,         /* [n, m] */
                      const uint8_t *xq,  /* [n, k] E4M3 codes */
                      const float *sx,    /* [n] */
                      const uint8_t *wq,  /* [m, k] E4M3 codes */
                      const float *sw,    /* [m] */
                      int n, int m, int k, void *stream);

#ifdef __cplusplus
}
#endif
#endif
