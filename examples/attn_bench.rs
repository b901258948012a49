//! Microseconds per call of the CPU paged attention on TinyLlama-1.1B's heads (32 query, 4 KV, head_dim 64,
//! 16-position blocks): a prompt of P tokens in one step, and a decode step of B sequences at context C.
//! `cargo run --release --example attn_bench [-- prefill=128,512 decode=8x64,8x512,1x512]`.
use std::time::Instant;
use triton_llama::backend::cpu::CpuBackend;
use triton_llama::backend::{AttnDims, Backend, KvStore, StepMeta};

const BS: usize = 16;

fn rand(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

/// `seqs` sequences of `ctx` positions, the last `new` of each computed in the step; blocks laid out one
/// sequence after another.
fn step(seqs: usize, ctx: usize, new: usize) -> StepMeta {
    let per = ctx.div_ceil(BS);
    let mut meta = StepMeta { block_size: BS, ..Default::default() };
    for s in 0..seqs {
        let block_table: Vec<u32> = (0..per).map(|b| (s * per + b) as u32).collect();
        meta.push_seq(&block_table, ctx - new..ctx);
    }
    meta
}

fn main() {
    let d =
        AttnDims { n_heads: 32, n_kv_heads: 4, head_dim: 64, rope_theta: 10000.0, rope_scale: 1.0, kv: KvStore::F32 };
    let (qw, kw) = (d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim);
    let mut cases: Vec<(String, StepMeta)> = Vec::new();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |key: &str, default: &str| {
        args.iter().find_map(|a| a.strip_prefix(&format!("{key}="))).unwrap_or(default).to_string()
    };
    for p in arg("prefill", "128,512").split(',').filter(|s| !s.is_empty()) {
        let p: usize = p.parse().expect("prefill length");
        cases.push((format!("prefill {p}"), step(1, p, p)));
    }
    for bc in arg("decode", "1x64,8x64,8x512").split(',').filter(|s| !s.is_empty()) {
        let (b, c) = bc.split_once('x').expect("BxC");
        let (b, c): (usize, usize) = (b.parse().unwrap(), c.parse().unwrap());
        cases.push((format!("decode {b} seqs at {c}"), step(b, c, 1)));
    }
    println!("{:<24} {:>10} {:>10}", "case", "us/call", "GFLOP/s");
    for (name, meta) in cases {
        let n = meta.n_tokens();
        let slots = meta.seqs.iter().map(|m| m.block_table.len()).sum::<usize>() * BS;
        let (kc, vc, q) = (rand(1, slots * kw), rand(2, slots * kw), rand(3, n * qw));
        let mut out = vec![0f32; n * qw];
        let checked = meta.check().expect("step");
        let visible: usize =
            meta.seqs.iter().map(|m| (0..m.n_tokens).map(|t| m.context_len - m.n_tokens + t + 1).sum::<usize>()).sum();
        let flop = 4.0 * visible as f64 * qw as f64;
        let mut run = || CpuBackend.paged_attention(&mut out, &q, &kc, &vc, checked, d).expect("attention");
        run();
        let reps = ((2e9 / flop) as usize).clamp(3, 2000);
        let best = (0..reps)
            .map(|_| {
                let t = Instant::now();
                run();
                t.elapsed().as_secs_f64()
            })
            .fold(f64::MAX, f64::min);
        println!("{name:<24} {:>10.1} {:>10.1}", best * 1e6, flop / best / 1e9);
    }
}
