//! GFLOP/s of the CPU matmul kernels against the legacy row-dot gemm, same process, interleaved, on
//! TinyLlama-1.1B's matmul shapes: `cargo run --release --example gemm_bench [-- M1,M2,... [KERNEL,...]]`
//! (the second argument keeps only the named kernels, e.g. `avx2`).
use std::time::Instant;
use triton_llama::backend::cpu::CpuBackend;
use triton_llama::backend::cpu_gemm::{Kernel, Packed, gemm_with};
use triton_llama::backend::{Backend, WeightFormat};
use triton_llama::tensor::{Tensor, TensorData};

fn rand(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005) | 1;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * 0.05
        })
        .collect()
}

/// Best of `reps` timings of `f`, seconds.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

fn main() {
    let ms: Vec<usize> =
        std::env::args().nth(1).map_or(vec![1, 8, 128], |s| s.split(',').map(|v| v.parse().unwrap()).collect());
    // (name, rows m, inner k): TinyLlama's projections and LM head.
    let shapes = [
        ("wq/wo", 2048, 2048),
        ("wk/wv", 256, 2048),
        ("gate/up", 5632, 2048),
        ("down", 2048, 5632),
        ("lm_head", 32000, 2048),
    ];
    let be = CpuBackend;
    let only: Option<Vec<String>> = std::env::args().nth(2).map(|s| s.split(',').map(str::to_owned).collect());
    let kernels: Vec<Kernel> = Kernel::ALL
        .into_iter()
        .filter(|k| k.available() && only.as_ref().is_none_or(|o| o.iter().any(|n| n == k.name())))
        .collect();
    println!("GFLOP/s (int8: GOP/s) per kernel this CPU runs; legacy: the unpacked row-dot gemm of bf16 weights");
    println!(
        "{:<8} {:>4} {:>9}  {}",
        "shape",
        "M",
        "legacy",
        kernels.iter().map(|k| format!("{:>25}", k.name())).collect::<String>()
    );
    println!(
        "{:<8} {:>4} {:>9}  {}",
        "",
        "",
        "",
        kernels.iter().map(|_| format!("{:>12} {:>12}", "bf16", "int8")).collect::<String>()
    );
    for &(name, m, k) in &shapes {
        let wf = rand(m as u64, m * k);
        let t =
            Tensor { shape: vec![m, k], data: TensorData::BF16(wf.iter().map(|&v| half::bf16::from_f32(v)).collect()) };
        let plain = be.upload(t.clone()).unwrap();
        let pb = Packed::bf16(&t, false);
        let q8 = be.upload_matmul(t, WeightFormat::Int8).unwrap();
        let triton_llama::backend::cpu::CpuWeight::Packed(pq) = &q8 else { unreachable!() };
        for &n in &ms {
            let x = rand(7, n * k);
            let mut out = vec![0f32; n * m];
            let reps = (2e9 / (2.0 * (n * m * k) as f64 + 1e8)).clamp(2.0, 20.0) as usize;
            let flop = 2.0 * (n * m * k) as f64 / 1e9;
            let legacy = flop / best(reps, || be.gemm(&mut out, &x, &plain, n).unwrap());
            let mut cols = String::new();
            for &kern in &kernels {
                // The plain loops are slow: only the smaller products.
                let (bf, q) = if kern != Kernel::Portable || n * m * k <= 128 * 2048 * 2048 {
                    (
                        flop / best(reps, || gemm_with(kern, &mut out, &x, &pb, n)),
                        flop / best(reps, || gemm_with(kern, &mut out, &x, pq, n)),
                    )
                } else {
                    (f64::NAN, f64::NAN)
                };
                cols += &format!("{bf:>12.1} {q:>12.1}");
            }
            println!("{name:<8} {n:>4} {legacy:>9.1}  {cols}");
        }
    }
}
