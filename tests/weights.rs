//! Logit drift of the int8 (and bf16-activation) weight formats against the exact CPU path, on the fixture
//! models over four 64-position sequences (means of max-abs/std, rms/std, argmax agreement), held to
//! llama.cpp's q8_0 drift on the same weights and sequences as computed independently by
//! scripts/fixtures/q8_drift_reference.py (numpy, checked against transformers) into q8_0_drift.json.
mod common;
use common::*;
use serde_json::Value;
use std::sync::Arc;
use triton_llama::backend::WeightFormat;
use triton_llama::engine::runner::{KvPlan, Runner};
use triton_llama::loader;

fn runner_with(ckpt: &str, fmt: WeightFormat) -> Runner {
    let src = loader::open(&fixture(ckpt)).unwrap();
    Runner::start_cpu_with(Arc::from(src), 1, KvPlan { num_blocks: 64, block_size: 4 }, fmt).unwrap()
}

struct Drift {
    max_abs_over_std: f64,
    rms_over_std: f64,
    argmax_agreement: f64,
}

fn drift(exact: &[f32], got: &[f32], vocab: usize) -> Drift {
    let n = exact.len() as f64;
    let mean = exact.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (exact.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = exact
        .iter()
        .zip(got)
        .map(|(a, b)| (a - b).abs() as f64)
        .map(|d| if d.is_nan() { f64::INFINITY } else { d })
        .fold(0.0, f64::max);
    let rms = (exact.iter().zip(got).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>() / n).sqrt();
    let argmax = |r: &[f32]| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0;
    let rows = exact.len() / vocab;
    let agree = exact.chunks(vocab).zip(got.chunks(vocab)).filter(|(a, b)| argmax(a) == argmax(b)).count();
    Drift { max_abs_over_std: max / std, rms_over_std: rms / std, argmax_agreement: agree as f64 / rows as f64 }
}

fn check(model: &str) {
    let path = fixture(&format!("models/{model}/q8_0_drift.json"));
    let q8: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let seqs: Vec<Vec<u32>> = q8["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect();
    assert!(seqs.len() >= 4 && seqs.iter().all(|s| s.len() == 64));
    let ckpt = format!("models/{model}/hf");
    let exact_runner = runner_with(&ckpt, WeightFormat::AsLoaded);
    let exact: Vec<Vec<f32>> = seqs.iter().map(|ids| prompt_logits(&exact_runner, ids)).collect();
    let (ref_max, ref_rms, ref_agree) = (
        q8["max_abs_over_std"].as_f64().unwrap(),
        q8["rms_over_std"].as_f64().unwrap(),
        q8["argmax_agreement"].as_f64().unwrap(),
    );
    eprintln!("{model}: llama.cpp q8_0 (numpy): max-abs/std {ref_max:.4}, rms/std {ref_rms:.4}, argmax {ref_agree:.4}");
    for fmt in [WeightFormat::Int8, WeightFormat::Bf16] {
        let r = runner_with(&ckpt, fmt);
        let ds: Vec<Drift> =
            seqs.iter().zip(&exact).map(|(ids, e)| drift(e, &prompt_logits(&r, ids), e.len() / ids.len())).collect();
        let mean = |f: fn(&Drift) -> f64| ds.iter().map(f).sum::<f64>() / ds.len() as f64;
        let d = Drift {
            max_abs_over_std: mean(|d| d.max_abs_over_std),
            rms_over_std: mean(|d| d.rms_over_std),
            argmax_agreement: mean(|d| d.argmax_agreement),
        };
        eprintln!(
            "{model} {}: max-abs/std {:.4}, rms/std {:.4}, argmax agreement {:.4} (means over {} x 64 positions)",
            fmt.name(),
            d.max_abs_over_std,
            d.rms_over_std,
            d.argmax_agreement,
            seqs.len()
        );
        assert!(
            d.max_abs_over_std <= ref_max,
            "{model} {}: max-abs/std {} > q8_0's {ref_max}",
            fmt.name(),
            d.max_abs_over_std
        );
        assert!(d.rms_over_std <= ref_rms, "{model} {}: rms/std {} > q8_0's {ref_rms}", fmt.name(), d.rms_over_std);
        // Argmax flips are discrete: one position per 64-token sequence (the binomial noise of 256 samples at
        // ~0.9 agreement is 0.018) is the slack.
        let slack = 1.0 / 64.0;
        assert!(
            d.argmax_agreement >= ref_agree - slack,
            "{model} {}: argmax agreement {} < q8_0's {ref_agree} - {slack}",
            fmt.name(),
            d.argmax_agreement
        );
    }
}

#[test]
fn int8_and_bf16_drift_no_worse_than_llama_cpp_q8_0_gqa_bf16() {
    check("gqa_bf16");
}

#[test]
fn int8_and_bf16_drift_no_worse_than_llama_cpp_q8_0_mha_f32() {
    check("mha_f32");
}

/// The names the CLI, the Triton parameter and deploy_triton.py accept.
#[test]
fn unknown_weight_format_is_refused() {
    assert!(WeightFormat::parse("fp4").is_err());
    assert_eq!(WeightFormat::parse("INT8").unwrap(), WeightFormat::Int8);
    assert_eq!(WeightFormat::parse("as-loaded").unwrap(), WeightFormat::AsLoaded);
    assert_eq!(WeightFormat::parse("f32").unwrap(), WeightFormat::AsLoaded);
    assert_eq!(WeightFormat::parse("auto").unwrap(), WeightFormat::Auto);
    assert_eq!(WeightFormat::default(), WeightFormat::Auto);
}

/// The default is the bf16 arithmetic on a bf16 checkpoint and the exact path on an f32 one: bit-identical logits
/// to the format it stands for, and different ones from the other (on a bf16 checkpoint only where the bf16
/// kernel is AVX512_BF16's: elsewhere bf16 weights run the f32 kernel).
#[test]
fn the_default_is_bf16_arithmetic_for_bf16_checkpoints_and_exact_for_f32_ones() {
    let ids: Vec<u32> = (1..40).map(|i| (i * 37 % 500) as u32).collect();
    let logits = |ckpt: &str, fmt| prompt_logits(&runner_with(ckpt, fmt), &ids);
    let bf16 = "models/gqa_bf16/hf";
    let auto = logits(bf16, WeightFormat::Auto);
    assert_eq!(auto, logits(bf16, WeightFormat::Bf16));
    let bf16_dot = triton_llama::backend::cpu_gemm::kernels_in_use().contains("vdpbf16ps");
    assert_eq!(auto != logits(bf16, WeightFormat::AsLoaded), bf16_dot);
    let f32 = "models/mha_f32/hf";
    assert_eq!(logits(f32, WeightFormat::Auto), logits(f32, WeightFormat::AsLoaded));
    assert_eq!(WeightFormat::Auto.resolve(triton_llama::tensor::DType::F16), WeightFormat::AsLoaded);
}
