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

impl Drift {
    /// Each measure's mean over `ds` (one per sequence).
    fn mean(ds: &[Drift]) -> Drift {
        let m = |f: fn(&Drift) -> f64| ds.iter().map(f).sum::<f64>() / ds.len() as f64;
        Drift {
            max_abs_over_std: m(|d| d.max_abs_over_std),
            rms_over_std: m(|d| d.rms_over_std),
            argmax_agreement: m(|d| d.argmax_agreement),
        }
    }
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
        let d = Drift::mean(&ds);
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

fn sequences(model: &str) -> Vec<Vec<u32>> {
    let path = fixture(&format!("models/{model}/q8_0_drift.json"));
    let q8: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    q8["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect())
        .collect()
}

/// `--weights fp8` (its CPU reference twin) against the independent oracle of scripts/fixtures/fp8_drift_reference.py
/// (numpy with PyTorch's E4M3 cast, the format's f32 scale and quotient): the engine's logits equal the oracle's
/// at most positions, and its drift against the exact path is the oracle's. The drift against bf16 is printed
/// (the README's table).
///
/// Why these thresholds. E4M3 keeps 3 mantissa bits, so each weight and activation moves by up to 1/16 of itself
/// (rms about 2.5 %) where q8_0 moves by about 0.5 %; on these tiny random models nothing averages that out, so
/// fp8's drift is 4x q8_0's (rms/std 0.17-0.28 against 0.045-0.071) and argmax flips are common (0.6-0.7
/// agreement). Published FP8 results (per-channel / per-token E4M3 in TensorRT-LLM and vLLM on Llama 7B-70B: 99 %+
/// of the bf16 benchmark scores) are for trained models; here the test's job is that the engine adds no error
/// beyond the format's, so the oracle sets the bar. The engine sums in f32 where the oracle sums in float64; now
/// and then that moves one activation across an E4M3 rounding boundary (1/16 of its value), and on these models
/// the sequence diverges from there on (at 0.06-0.25 of the std, near fp8's own drift): in the committed run 178
/// of the 256 positions matched to 1 % of the std, the first divergences at positions 12 and 38 of two of the four
/// sequences. A wrong scale, rounding or missing quantization diverges from position 0. So: at least half the
/// positions within 1 % of the std of the oracle, position 0 of every sequence among them, the drift against the
/// exact path within 15 % of the oracle's (max-abs within 30 %), the argmax agreement within 4 per 64.
fn check_fp8(model: &str) {
    let dir = format!("models/{model}");
    let oracle: Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("{dir}/fp8_drift.json"))).unwrap()).unwrap();
    let seqs = sequences(model);
    assert_eq!(oracle["sequences"], serde_json::to_value(&seqs).unwrap(), "the two oracles' sequences");
    let ckpt = format!("{dir}/hf");
    let fp8 = runner_with(&ckpt, WeightFormat::Fp8);
    let got: Vec<Vec<f32>> = seqs.iter().map(|ids| prompt_logits(&fp8, ids)).collect();
    let want: Vec<f32> = std::fs::read(fixture(&format!("{dir}/fp8_logits.f32")))
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let flat: Vec<f32> = got.concat();
    assert_eq!(want.len(), flat.len());
    let vocab = got[0].len() / seqs[0].len();
    let n = want.len() as f64;
    let mean = want.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (want.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let close: Vec<bool> = want
        .chunks(vocab)
        .zip(flat.chunks(vocab))
        .map(|(a, b)| {
            let rms = (a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>() / vocab as f64).sqrt();
            rms <= 0.01 * std
        })
        .collect();
    let matched = close.iter().filter(|&&c| c).count();
    let firsts: Vec<usize> = close.chunks(seqs[0].len()).map(|c| c.iter().take_while(|&&m| m).count()).collect();
    eprintln!(
        "{model} fp8: {matched} of {} positions within 1 % of the std of the oracle's; each sequence's first {firsts:?}",
        close.len()
    );
    assert!(matched * 2 >= close.len(), "{model}: {matched} of {} positions match the oracle", close.len());
    assert!(firsts.iter().all(|&f| f > 0), "{model}: a sequence differs from the oracle at position 0: {firsts:?}");
    let (o_max, o_rms, o_agree) = (
        oracle["max_abs_over_std"].as_f64().unwrap(),
        oracle["rms_over_std"].as_f64().unwrap(),
        oracle["argmax_agreement"].as_f64().unwrap(),
    );
    eprintln!("{model} oracle fp8 against exact: max-abs/std {o_max:.4}, rms/std {o_rms:.4}, argmax {o_agree:.4}");
    for base in [WeightFormat::AsLoaded, WeightFormat::Bf16] {
        let r = runner_with(&ckpt, base);
        let ds: Vec<Drift> = seqs.iter().zip(&got).map(|(ids, g)| drift(&prompt_logits(&r, ids), g, vocab)).collect();
        let Drift { max_abs_over_std: max, rms_over_std: rms, argmax_agreement: agree } = Drift::mean(&ds);
        eprintln!(
            "{model} fp8 against {}: max-abs/std {max:.4}, rms/std {rms:.4}, argmax agreement {agree:.4} (means over {} x 64)",
            base.name(),
            seqs.len()
        );
        if base == WeightFormat::AsLoaded {
            assert!((rms - o_rms).abs() <= 0.15 * o_rms, "{model}: fp8 rms/std {rms}, the oracle's {o_rms}");
            assert!((max - o_max).abs() <= 0.3 * o_max, "{model}: fp8 max-abs/std {max}, the oracle's {o_max}");
            assert!((agree - o_agree).abs() <= 4.0 / 64.0, "{model}: fp8 argmax {agree}, the oracle's {o_agree}");
        }
    }
}

#[test]
fn fp8_is_the_oracles_fp8_gqa_bf16() {
    check_fp8("gqa_bf16");
}

#[test]
fn fp8_is_the_oracles_fp8_mha_f32() {
    check_fp8("mha_f32");
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
    assert_eq!(WeightFormat::parse("FP8").unwrap(), WeightFormat::Fp8);
    assert_eq!(WeightFormat::parse("fp8_e4m3").unwrap(), WeightFormat::Fp8);
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

/// The CPU engine refuses `weights fp8` by name and says what to use instead (its reference twin, which the tests
/// above run through `Runner`, is behind TL_CPU_FP8_REFERENCE=1); the CPU benchmark refuses it too.
#[test]
fn fp8_on_the_cpu_engine_is_refused_by_name() {
    use triton_llama::engine::{Engine, EngineConfig};
    assert!(!triton_llama::backend::fp8_cpu_reference(), "the test environment sets {}", "TL_CPU_FP8_REFERENCE");
    let src = loader::open(&fixture("models/mha_f32/hf")).unwrap();
    let err = Engine::new(src, EngineConfig { weights: WeightFormat::Fp8, ..Default::default() }).err().unwrap();
    let msg = err.to_string();
    assert!(msg.contains("fp8") && msg.contains("8.9") && msg.contains("int8"), "{msg}");
    let src = loader::open(&fixture("models/mha_f32/hf")).unwrap();
    let err = triton_llama::bench::run_on(Arc::from(src), std::time::Instant::now(), WeightFormat::Fp8, &[1], 1, &[])
        .err()
        .unwrap();
    assert!(err.to_string().contains("compute capability 8.9"), "{err}");
}

/// Drift of a bf16 or fp8 KV cache against the f32 one, exact weights, the four 64-token sequences.
fn kv_drift(model: &str, kv: triton_llama::backend::KvDtype) -> Drift {
    use triton_llama::backend::{KvDtype, Precision};
    let seqs = sequences(model);
    let ckpt = format!("models/{model}/hf");
    let logits = |kv: KvDtype| -> Vec<Vec<f32>> {
        let src = loader::open(&fixture(&ckpt)).unwrap();
        let p = Precision { weights: WeightFormat::AsLoaded, kv };
        let r = Runner::start_cpu_with(Arc::from(src), 1, KvPlan { num_blocks: 64, block_size: 4 }, p).unwrap();
        seqs.iter().map(|ids| prompt_logits(&r, ids)).collect()
    };
    let (exact, got) = (logits(KvDtype::F32), logits(kv));
    let vocab = exact[0].len() / seqs[0].len();
    let ds: Vec<Drift> = exact.iter().zip(&got).map(|(e, g)| drift(e, g, vocab)).collect();
    let d = Drift::mean(&ds);
    eprintln!(
        "{model}: {} KV against f32 KV: max-abs/std {:.4}, rms/std {:.5}, argmax {:.4}",
        kv.name(),
        d.max_abs_over_std,
        d.rms_over_std,
        d.argmax_agreement
    );
    d
}

fn oracle(model: &str, file: &str) -> (f64, f64) {
    let v: Value = serde_json::from_slice(&std::fs::read(fixture(&format!("models/{model}/{file}"))).unwrap()).unwrap();
    (v["max_abs_over_std"].as_f64().unwrap(), v["rms_over_std"].as_f64().unwrap())
}

/// A bf16 KV cache (`kv_cache_dtype bf16`, the CUDA default; on the CPU its twin: each K and V value rounded to
/// bf16 as it is written). Rounding moves each K and V value by at most 2^-9 of itself, where llama.cpp's q8_0 (the
/// independent numpy reference of q8_0_drift.json) moves every weight and every matmul input by about 0.5 % rms:
/// the bound is a third of q8_0's drift (the fixtures measure a seventh to a sixth), and the argmax agreement at
/// least 62 of 64.
#[test]
fn bf16_kv_cache_drift_is_a_fraction_of_q8_0s() {
    for model in ["gqa_bf16", "mha_f32"] {
        let d = kv_drift(model, triton_llama::backend::KvDtype::Bf16);
        let (q8_max, q8_rms) = oracle(model, "q8_0_drift.json");
        assert!(d.max_abs_over_std > 0.0, "{model}: the bf16 cache changed nothing");
        assert!(d.max_abs_over_std <= q8_max / 3.0, "{model}: bf16 KV max-abs/std above a third of q8_0's {q8_max}");
        assert!(d.rms_over_std <= q8_rms / 3.0, "{model}: bf16 KV rms/std above a third of q8_0's {q8_rms}");
        assert!(d.argmax_agreement >= 62.0 / 64.0, "{model}: bf16 KV argmax agreement {}", d.argmax_agreement);
    }
}

/// An fp8 KV cache (E4M3, scale 1): each K and V value moves by up to 1/16 of itself, as FP8 weights move every
/// weight and every matmul input (the oracle-checked drift of fp8_drift.json); only attention reads the cache, so
/// its drift stays below the FP8 weights' (measured: about half of it on these models).
#[test]
fn fp8_kv_cache_drift_is_below_fp8_weights_drift() {
    for model in ["gqa_bf16", "mha_f32"] {
        let d = kv_drift(model, triton_llama::backend::KvDtype::Fp8);
        let (w_max, w_rms) = oracle(model, "fp8_drift.json");
        assert!(d.max_abs_over_std > 0.0, "{model}: the fp8 cache changed nothing");
        assert!(d.max_abs_over_std <= w_max, "{model}: fp8 KV max-abs/std above fp8 weights' {w_max}");
        assert!(d.rms_over_std <= w_rms, "{model}: fp8 KV rms/std above fp8 weights' {w_rms}");
    }
}
