//! Logits against Hugging Face `transformers` (golden files made by scripts/fixtures/gen_fixtures.py), tensor-parallel
//! equivalence, and mixed prefill/decode batches against solo runs.
mod common;
use common::*;
use triton_llama::engine::runner::StepInput;

/// f32 weights: transformers in f32 is itself ~2e-5 from a float64 reference.
const TOL_F32: f32 = 1e-4;
/// bf16 weights widened exactly to f32, f32 compute on both sides: the same function as the f32 case.
const TOL_BF16_WEIGHTS: f32 = 1e-4;

fn check_logits(ckpt: &str, model: &str, tol: f32) {
    let r = runner(ckpt, 1);
    let mut worst = 0f32;
    for c in golden(model) {
        let got = prompt_logits(&r, &c.input_ids);
        let want: Vec<f32> = c.logits.concat();
        let d = max_abs_diff(&got, &want);
        assert!(d <= tol, "{ckpt} case {}: max-abs logit diff {d} > {tol}", c.name);
        worst = worst.max(d);
    }
    eprintln!("{ckpt}: worst max-abs logit diff vs transformers {worst:.2e}");
}

#[test]
fn hf_f32_logits_match_transformers() {
    check_logits("models/mha_f32/hf", "mha_f32", TOL_F32);
}

#[test]
fn hf_sharded_f32_logits_match_transformers() {
    check_logits("models/mha_f32/hf_sharded", "mha_f32", TOL_F32);
}

#[test]
fn hf_bf16_gqa_logits_match_transformers() {
    check_logits("models/gqa_bf16/hf", "gqa_bf16", TOL_BF16_WEIGHTS);
}

/// Tensor parallelism splits the row-parallel matmuls' sums across ranks and adds the f32 partials in the
/// all-reduce: a reordering of f32 sums, which moves the fixtures' logits by ~1e-5 whatever the kernels'
/// accumulation (measured 0.8-1.4e-5 with f32 sums folded into f64 every 16, 128 or 256 products, or never) —
/// the size of our distance to transformers (1.5-3.1e-5). A wrong shard or a missing partial moves them by
/// far more than 1e-2.
const TOL_TP_VS_TP1: f32 = 3e-5;

fn check_tp(ckpt: &str, model: &str, tol: f32) {
    let cases = golden(model);
    let base = runner(ckpt, 1);
    let want: Vec<Vec<f32>> = cases.iter().map(|c| prompt_logits(&base, &c.input_ids)).collect();
    drop(base);
    for tp in [2, 4] {
        let r = runner(ckpt, tp);
        for (c, w) in cases.iter().zip(&want) {
            let got = prompt_logits(&r, &c.input_ids);
            let d = max_abs_diff(&got, w);
            assert!(d <= TOL_TP_VS_TP1, "{ckpt} TP={tp} case {}: max-abs diff to TP=1 is {d}", c.name);
            let dt = max_abs_diff(&got, &c.logits.concat());
            assert!(dt <= tol, "{ckpt} TP={tp} case {}: max-abs diff to transformers is {dt} > {tol}", c.name);
            eprintln!("{ckpt} TP={tp} case {}: max-abs diff to TP=1 {d:.2e}, to transformers {dt:.2e}", c.name);
        }
    }
}

#[test]
fn tensor_parallel_2_and_4_match_tp1_mha() {
    check_tp("models/mha_f32/hf", "mha_f32", TOL_F32);
}

#[test]
fn tensor_parallel_2_and_4_match_tp1_gqa() {
    check_tp("models/gqa_bf16/hf", "gqa_bf16", TOL_BF16_WEIGHTS);
}

/// One step holding a decode token of one sequence, a whole prompt of another and the middle chunk of a
/// third gives each the logits it gets alone.
#[test]
fn mixed_prefill_and_decode_batch_matches_solo_runs() {
    let cases = golden("gqa_bf16");
    let r = runner("models/gqa_bf16/hf", 1);
    let bs = r.block_size;
    let (a, b, c) = (&cases[0].input_ids, &cases[1].input_ids, &cases[2].input_ids);
    let blocks = |first: u32, n: usize| -> Vec<u32> { (first..first + n.div_ceil(bs) as u32).collect() };
    let (ta, tb, tc) = (blocks(0, a.len()), blocks(20, b.len()), blocks(40, c.len()));
    // Fill the caches: a's prompt minus its last token, c's first 10 tokens.
    let mut first = StepInput::default();
    first.meta.block_size = bs;
    first.push_seq(&a[..a.len() - 1], 0, &ta, false);
    first.push_seq(&c[..10], 0, &tc, false);
    r.run(first).unwrap();
    // Mixed step: a decodes its last token, b prefills entirely, c prefills tokens 10..20.
    let mut mixed = StepInput::default();
    mixed.meta.block_size = bs;
    mixed.push_seq(&a[a.len() - 1..], a.len() - 1, &ta, false);
    mixed.push_seq(b, 0, &tb, false);
    mixed.push_seq(&c[10..20], 10, &tc, false);
    let got = r.run(mixed).unwrap().logits;
    let v = 1000;
    for (i, (ids, name)) in [(&a[..], "a"), (&b[..], "b"), (&c[..20], "c")].into_iter().enumerate() {
        let solo = prompt_logits(&r, ids);
        let last = &solo[(ids.len() - 1) * v..];
        let d = max_abs_diff(&got[i * v..(i + 1) * v], last);
        assert!(d <= 1e-5, "sequence {name}: mixed-batch logits differ from solo by {d}");
        eprintln!("mixed batch, sequence {name}: max-abs diff to solo {d:.2e}");
    }
}

/// Every NeMo layout of a model gives the transformers logits (and so the Hugging Face copy's).
#[test]
fn nemo_checkpoints_match_transformers() {
    for (ckpt, model, tol) in [
        ("models/mha_f32/model.nemo", "mha_f32", TOL_F32),
        ("models/gqa_bf16/model.nemo", "gqa_bf16", TOL_BF16_WEIGHTS),
        ("models/gqa_bf16/model_tp2.nemo", "gqa_bf16", TOL_BF16_WEIGHTS),
        ("models/gqa_bf16/model_tp2_interleaved.nemo", "gqa_bf16", TOL_BF16_WEIGHTS),
        ("models/gqa_bf16/model_rootdir.nemo", "gqa_bf16", TOL_BF16_WEIGHTS),
        ("models/gqa_bf16/nemo_dir", "gqa_bf16", TOL_BF16_WEIGHTS),
    ] {
        check_logits(ckpt, model, tol);
    }
}

/// The .nemo and the Hugging Face copy of one model compute the same function (same weights, same code path).
#[test]
fn nemo_and_hf_copies_give_identical_logits() {
    for (nemo, hf, model) in [
        ("models/mha_f32/model.nemo", "models/mha_f32/hf", "mha_f32"),
        ("models/gqa_bf16/model_tp2.nemo", "models/gqa_bf16/hf", "gqa_bf16"),
    ] {
        let (a, b) = (runner(nemo, 1), runner(hf, 1));
        for c in golden(model) {
            let d = max_abs_diff(&prompt_logits(&a, &c.input_ids), &prompt_logits(&b, &c.input_ids));
            assert!(d <= 1e-6, "{nemo} vs {hf}, case {}: {d}", c.name);
        }
    }
}
