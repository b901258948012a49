//! CPU throughput benchmark on a random-weight model or any checkpoint: decode tokens/s at several batch sizes,
//! prefill tokens/s, and weight bytes streamed per second as a ratio to a memory copy measured in the same run.
//! The pieces both benchmarks share (steps on a synthetic batch, the decode measurement, the copy baseline
//! and the bandwidth ratio with its printing) live here; the GPU benchmark is `bench::cuda`.
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod guided;

use crate::Result;
use crate::backend::WeightFormat;
use crate::backend::cpu_mem::WeightMem;
use crate::engine::runner::{KvPlan, Runner, StepInput};
use crate::loader::CheckpointSource;
use crate::loader::random::RandomSource;
use crate::sampling::{SampleBatch, SampleRow, SamplingParams};
use crate::tensor::DType;
use rayon::prelude::*;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct BenchReport {
    /// What was benchmarked (the checkpoint's format line).
    pub model: String,
    /// How the matmul weights were held (`WeightFormat::name`).
    pub weights: String,
    /// Seconds from opening the checkpoint to a ready runner (weights read and laid out).
    pub load_s: f64,
    pub model_params: usize,
    pub weight_bytes: u64,
    pub threads: usize,
    /// The CPU's model name (`/proc/cpuinfo`), or the architecture where it does not say.
    pub cpu: String,
    /// The matmul micro-kernels that ran, per weight format (`cpu_gemm::kernels_in_use`; `TL_CPU_KERNEL` forces).
    pub cpu_kernels: String,
    /// Megabytes of this process's memory on transparent huge pages after the load (the packed CPU weights,
    /// see `backend::cpu_mem`); `None` where the kernel does not say.
    pub huge_page_mb: Option<f64>,
    /// A parallel and a single-threaded memcpy of a buffer far larger than the caches.
    pub copies: Vec<CopyBaseline>,
    pub decode: Vec<DecodePoint>,
    /// One prompt of each length, alone, in one step.
    pub prefill: Vec<PrefillPoint>,
    /// See [`bandwidth_ratio`].
    pub batch1_bandwidth_ratio: f64,
    /// Bytes read per second (GB/s) by all threads summing a 1 GiB buffer on huge pages, best of before and after
    /// the decode points: the most a memory-bound step can stream, measured in this run (see [`ReadProbe`]).
    pub read_gbps: f64,
    /// Batch-1 decode's upper bound on this machine now: `read_gbps` over the weight bytes a step streams.
    pub batch1_ceiling_tok_s: f64,
}

#[derive(Debug, Serialize)]
pub struct DecodePoint {
    pub batch: usize,
    pub ms_per_step: f64,
    pub tok_s: f64,
    /// Weight bytes read per second (every weight but the embedding table is read once per step).
    pub weight_gbps: f64,
}

#[derive(Debug, Serialize)]
pub struct PrefillPoint {
    pub tokens: usize,
    pub ms: f64,
    pub tok_s: f64,
}

/// A memory copy measured in the same run as the benchmark it normalises.
#[derive(Debug, Clone, Serialize)]
pub struct CopyBaseline {
    /// What was copied how, e.g. "memcpy, 1 thread" or "device-to-device".
    pub what: String,
    /// Bytes copied per second (GB/s).
    pub copied_gbps: f64,
    /// The memory traffic that implies: every byte is read once and written once (2 × copied), the
    /// convention of STREAM's Copy and CUDA's bandwidthTest.
    pub traffic_gbps: f64,
}

impl CopyBaseline {
    pub fn new(what: impl Into<String>, copied_gbps: f64) -> Self {
        CopyBaseline { what: what.into(), copied_gbps, traffic_gbps: 2.0 * copied_gbps }
    }
}

/// The copy with the most traffic, or none.
fn fastest(copies: &[CopyBaseline]) -> Option<&CopyBaseline> {
    copies.iter().max_by(|a, b| a.traffic_gbps.total_cmp(&b.traffic_gbps))
}

/// Weight bytes read per second divided by the read + write traffic of the fastest copy: the fraction of
/// the measured memory bandwidth a step streaming the weights achieves (0 without a copy).
pub fn ratio_to_copy(weight_gbps: f64, copies: &[CopyBaseline]) -> f64 {
    fastest(copies).map_or(0.0, |c| weight_gbps / c.traffic_gbps)
}

/// [`ratio_to_copy`] of the batch-1 decode point (0 without one).
pub fn bandwidth_ratio(decode: &[DecodePoint], copies: &[CopyBaseline]) -> f64 {
    decode.iter().find(|d| d.batch == 1).map_or(0.0, |d| ratio_to_copy(d.weight_gbps, copies))
}

/// The copy and decode lines both benchmarks print.
pub fn print_bandwidth(copies: &[CopyBaseline], decode: &[DecodePoint]) {
    for c in copies {
        println!("copy ({}): {:.2} GB/s copied, {:.2} GB/s read+write", c.what, c.copied_gbps, c.traffic_gbps);
    }
    for d in decode {
        println!(
            "decode batch {:>2}: {:8.2} ms/step {:9.1} tok/s  weights {:7.2} GB/s ({:.3} of copy read+write)",
            d.batch,
            d.ms_per_step,
            d.tok_s,
            d.weight_gbps,
            ratio_to_copy(d.weight_gbps, copies)
        );
    }
    let what = fastest(copies).map_or("none", |c| c.what.as_str());
    println!("batch-1 weight bandwidth / copy read+write bandwidth ({what}): {:.3}", bandwidth_ratio(decode, copies));
}

/// A buffer to measure read bandwidth on, held like the packed weights ([`WeightMem`]: huge pages where the
/// kernel allows). Batch-1 decode reads each weight once per token and writes almost nothing, so reading (not a
/// copy, which also writes) is its ceiling.
pub struct ReadProbe(WeightMem<u64>);

impl ReadProbe {
    pub fn new(bytes: usize) -> ReadProbe {
        let mut buf = WeightMem::<u64>::zeroed(bytes / 8);
        // Distinct non-zero words, so no page stays the shared zero page and no read can be skipped.
        buf.par_iter_mut().enumerate().for_each(|(i, v)| *v = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        ReadProbe(buf)
    }

    /// Best-of-`reps` bytes read per second by all threads, GB/s.
    pub fn gbps(&self, reps: usize) -> f64 {
        let chunk = self.0.len().div_ceil(rayon::current_num_threads().max(1) * 4).max(1);
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            let x = self.0.par_chunks(chunk).map(xor_words).reduce(|| 0, |a, b| a ^ b);
            best = best.min(t.elapsed().as_secs_f64());
            std::hint::black_box(x);
        }
        (self.0.len() * 8) as f64 / best / 1e9
    }
}

/// XOR of all words (a reduction the compiler vectorizes, so the loop runs at memory speed).
#[multiversion::multiversion(targets("x86_64+avx512f", "x86_64+avx2"))]
fn xor_words(w: &[u64]) -> u64 {
    w.iter().fold(0, |a, &v| a ^ v)
}

/// Best-of-`reps` copy bandwidth of `bytes`-sized buffers, GB/s (bytes copied / s).
fn copy_bandwidth(bytes: usize, reps: usize, parallel: bool) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let chunk = bytes / rayon::current_num_threads().max(1) / 4;
    let mut best = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        if parallel {
            dst.par_chunks_mut(chunk).zip(src.par_chunks(chunk)).for_each(|(d, s)| d.copy_from_slice(s));
        } else {
            dst.copy_from_slice(&src);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    bytes as f64 / best / 1e9
}

/// A step of `seqs` sequences, each `len` new tokens from position `start`, sequence s owning blocks
/// `s * blocks_per_seq ..`; deterministic token ids in `3..vocab`.
pub(crate) fn step_for(
    seqs: usize,
    len: usize,
    start: usize,
    blocks_per_seq: usize,
    block_size: usize,
    vocab: usize,
) -> StepInput {
    let mut input = StepInput::default();
    input.meta.block_size = block_size;
    for s in 0..seqs {
        let table: Vec<u32> = (0..blocks_per_seq).map(|b| (s * blocks_per_seq + b) as u32).collect();
        let token_start = input.meta.push_seq(&table, start..start + len);
        input.tokens.extend((start..start + len).map(|p| ((s * 7919 + p * 31) % (vocab - 3) + 3) as u32));
        input.logit_rows.push(token_start + len - 1);
    }
    // Greedy picks on the device, as the engine's steps do: only ids come back.
    let greedy = SamplingParams::default();
    let rows: Vec<SampleRow> =
        (0..seqs).map(|_| SampleRow { params: &greedy, u: 0.0, context: &[], generated: &[], eos: 2 }).collect();
    input.sample = Some(SampleBatch::new(&rows, vocab));
    input
}

/// Decode at batch `b`: a 16-token prompt per sequence, one warm-up step, then `steps` timed steps;
/// `streamed_bytes` are the weight bytes one step reads. Needs `16 + steps + 1` positions per sequence.
pub(crate) fn decode_point(
    runner: &Runner,
    b: usize,
    steps: usize,
    blocks_per_seq: usize,
    block_size: usize,
    vocab: usize,
    streamed_bytes: u64,
) -> Result<DecodePoint> {
    runner.run(step_for(b, 16, 0, blocks_per_seq, block_size, vocab))?; // prompt
    runner.run(step_for(b, 1, 16, blocks_per_seq, block_size, vocab))?; // warm-up
    let t = Instant::now();
    for i in 0..steps {
        runner.run(step_for(b, 1, 17 + i, blocks_per_seq, block_size, vocab))?;
    }
    let step = t.elapsed().as_secs_f64() / steps.max(1) as f64;
    Ok(DecodePoint {
        batch: b,
        ms_per_step: step * 1e3,
        tok_s: b as f64 / step,
        weight_gbps: streamed_bytes as f64 / step / 1e9,
    })
}

/// Runs the benchmark on the random bench model; `decode_steps` per batch size.
pub fn run(batches: &[usize], decode_steps: usize, prefills: &[usize]) -> Result<BenchReport> {
    run_with(batches, decode_steps, prefills, WeightFormat::Auto)
}

/// `run` with the matmul weights held in `fmt`.
pub fn run_with(batches: &[usize], decode_steps: usize, prefills: &[usize], fmt: WeightFormat) -> Result<BenchReport> {
    let t = Instant::now();
    let src = RandomSource::new(RandomSource::bench_config(), DType::BF16, 1)?;
    run_on(Arc::new(src), t, fmt, batches, decode_steps, prefills)
}

/// Runs the benchmark on `src` (opened at `opened`, which starts the load time): decode at each batch size
/// (`decode_steps` timed steps after a 16-token prompt per sequence and a warm-up step), then each prefill
/// length as one prompt in one step, after the decode points (so the weights are warm). Token ids are
/// synthetic (any id below the vocabulary size), so no tokenizer is needed.
/// `fmt` is how the matmul weights are held (int8: quantized at load; a decode step streams 34 bytes per 32
/// weights, values and an f16 scale).
pub fn run_on(
    src: Arc<dyn CheckpointSource>,
    opened: Instant,
    fmt: WeightFormat,
    batches: &[usize],
    decode_steps: usize,
    prefills: &[usize],
) -> Result<BenchReport> {
    let fmt = fmt.resolve_for(src.as_ref());
    if fmt == WeightFormat::Fp8 {
        return Err(crate::Error::Config(crate::engine::FP8_ON_CPU.into()));
    }
    let cfg = src.config().clone();
    let held = |t: &crate::loader::TensorInfo| {
        let n = t.shape.iter().product::<usize>();
        let int8 = fmt == WeightFormat::Int8 && t.shape.len() == 2 && t.name != "tok_emb";
        (if int8 { n + n / 16 } else { n * t.dtype.size() }) as u64
    };
    let weight_bytes: u64 = src.tensors().iter().map(held).sum();
    let emb_bytes = src.tensors().iter().find(|t| t.name == "tok_emb").map_or(0, held);
    let (block_size, vocab) = (16, cfg.vocab_size);
    let max_batch = batches.iter().cloned().max().unwrap_or(1);
    let longest = prefills.iter().cloned().max().unwrap_or(0);
    let ctx = (longest.max(16 + decode_steps + 8)).div_ceil(block_size);
    let model = src.format();
    let runner = Runner::start_cpu_with(src, 1, KvPlan { num_blocks: ctx * max_batch, block_size }, fmt)?;
    let load_s = opened.elapsed().as_secs_f64();
    let threads = rayon::current_num_threads();
    let huge_page_mb = crate::backend::cpu_mem::anon_huge_kb().map(|kb| kb as f64 / 1024.0);
    let copies = vec![
        CopyBaseline::new(format!("memcpy, {threads} threads"), copy_bandwidth(256 << 20, 5, true)),
        CopyBaseline::new("memcpy, 1 thread", copy_bandwidth(256 << 20, 5, false)),
    ];
    let probe = ReadProbe::new(1 << 30);
    let read_before = probe.gbps(3);
    let decode = batches
        .iter()
        .map(|&b| decode_point(&runner, b, decode_steps, ctx, block_size, vocab, weight_bytes - emb_bytes))
        .collect::<Result<Vec<_>>>()?;
    // The machine's bandwidth drifts (other tenants): the best of before and after the decode points.
    let read_gbps = read_before.max(probe.gbps(3));
    drop(probe);
    let mut prefill = Vec::new();
    for &n in prefills.iter().filter(|&&n| n > 0) {
        let t = Instant::now();
        runner.run(step_for(1, n, 0, ctx, block_size, vocab))?;
        let s = t.elapsed().as_secs_f64();
        prefill.push(PrefillPoint { tokens: n, ms: s * 1e3, tok_s: n as f64 / s });
    }
    Ok(BenchReport {
        model,
        weights: fmt.name().into(),
        load_s,
        model_params: cfg.num_params(),
        weight_bytes,
        threads,
        cpu: cpu_model(),
        cpu_kernels: crate::backend::cpu_gemm::kernels_in_use(),
        huge_page_mb,
        batch1_bandwidth_ratio: bandwidth_ratio(&decode, &copies),
        read_gbps,
        batch1_ceiling_tok_s: read_gbps * 1e9 / (weight_bytes - emb_bytes).max(1) as f64,
        copies,
        decode,
        prefill,
    })
}

/// `model name` (x86-64) or the implementer and part (aarch64) from `/proc/cpuinfo`.
fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |k: &str| {
        info.lines().find(|l| l.split(':').next().is_some_and(|n| n.trim() == k)).and_then(|l| l.split_once(':'))
    };
    match (field("model name"), field("CPU implementer"), field("CPU part")) {
        (Some((_, m)), ..) => m.trim().to_string(),
        (None, Some((_, i)), Some((_, p))) => {
            format!("{} implementer {} part {}", std::env::consts::ARCH, i.trim(), p.trim())
        }
        _ => std::env::consts::ARCH.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_uses_the_fastest_copy_read_plus_write() {
        let copies = [CopyBaseline::new("a", 10.0), CopyBaseline::new("b", 20.0)];
        assert_eq!(copies[1].traffic_gbps, 40.0);
        assert_eq!(ratio_to_copy(8.0, &copies), 0.2);
        let decode = [
            DecodePoint { batch: 8, ms_per_step: 1.0, tok_s: 1.0, weight_gbps: 1.0 },
            DecodePoint { batch: 1, ms_per_step: 1.0, tok_s: 1.0, weight_gbps: 20.0 },
        ];
        assert_eq!(bandwidth_ratio(&decode, &copies), 0.5);
        assert_eq!(bandwidth_ratio(&decode, &[]), 0.0);
    }
}
