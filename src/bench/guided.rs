//! What structured output costs: the decode step of a batch whose every row follows a JSON schema against the same
//! batch unconstrained, in the same run (the token masks are computed on the engine thread while the forward pass
//! runs, then applied in the sampler), and the time to first token that compiling a schema adds.
use crate::engine::{Engine, Request};
use crate::guided::Guide;
use crate::sampling::SamplingParams;
use crate::{Error, Result};
use std::collections::HashSet;
use std::time::Instant;

/// The schema every guided row follows: an object of strings and an array, mostly free text (the masks a JSON
/// answer spends most of its tokens in).
pub fn schema(tag: usize) -> serde_json::Value {
    serde_json::json!({
        "type": "object",
        "properties": {
            format!("title_{tag}"): {"type": "string"},
            "story": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string", "enum": ["fox", "dog", "über"]}},
            "year": {"type": "integer"},
        },
        "required": [format!("title_{tag}"), "story", "tags", "year"],
    })
}

/// One run's numbers (medians over the timed steps or rounds).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GuidedReport {
    pub batch: usize,
    pub vocab: usize,
    /// Decode steps timed with every row running, unconstrained and guided.
    pub plain_steps: usize,
    pub guided_steps: usize,
    pub plain_ms_per_step: f64,
    pub guided_ms_per_step: f64,
    /// guided / plain - 1.
    pub overhead: f64,
    /// Host time of the batch's constraints per guided step: its masks (overlapping the forward pass) and
    /// advancing them on the sampled tokens.
    pub mask_ms_per_step: f64,
    /// Compiling one schema (in `add_request`).
    pub compile_ms: f64,
    /// Time to first token of one request, uncached prompt, unconstrained and guided.
    pub ttft_plain_ms: f64,
    pub ttft_guided_ms: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Greedy, `max` new tokens, EOS ignored. Greedy both ways: sampling at a temperature sorts the finite logits,
/// which a guided row has far fewer of, and that would credit the guided rows with a cheaper sampler.
fn params(guide: Option<Guide>, max: usize) -> SamplingParams {
    SamplingParams { max_new_tokens: max, ignore_eos: true, guide, ..Default::default() }
}

/// Decode step times of `batch` rows on `prompt` (the first `prompt_len` ids of it): steps after every row has its
/// first token, while every row still runs (a guided row ends when its JSON is complete). Returns the step times
/// and the mask time over them.
fn decode(
    e: &mut Engine,
    prompt: &[u32],
    batch: usize,
    steps: usize,
    guided: bool,
    id0: u64,
) -> Result<(Vec<f64>, f64)> {
    for i in 0..batch as u64 {
        let guide = guided.then(|| Guide::JsonSchema(schema(0)));
        e.add_request(Request { id: id0 + i, prompt_ids: prompt.to_vec(), params: params(guide, steps + 8) })?;
    }
    let mut started = HashSet::new();
    while started.len() < batch && e.has_work() {
        started.extend(e.step()?.iter().filter(|o| o.token.is_some()).map(|o| o.id));
    }
    let (mut times, mut mask) = (Vec::new(), 0.0);
    for _ in 0..steps {
        let (t, m) = (Instant::now(), e.guided_mask_ms());
        let outs = e.step()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let full = outs.iter().filter(|o| o.token.is_some()).count() == batch;
        if !full || outs.iter().any(|o| o.finish.is_some() || o.error.is_some()) {
            break;
        }
        times.push(ms);
        mask += e.guided_mask_ms() - m;
    }
    for i in 0..batch as u64 {
        e.abort(id0 + i);
    }
    Ok((times, mask))
}

/// Time to first token of one request on `prompt` (its first token made unique per round, so the prefix cache
/// never serves it), and the time `add_request` took (the schema's compilation when guided).
fn first_token(e: &mut Engine, prompt: &[u32], guide: Option<Guide>, id: u64) -> Result<(f64, f64)> {
    let t = Instant::now();
    e.add_request(Request { id, prompt_ids: prompt.to_vec(), params: params(guide, 4) })?;
    let added = t.elapsed().as_secs_f64() * 1e3;
    loop {
        let outs = e.step()?;
        if outs.iter().any(|o| o.id == id && o.token.is_some()) {
            let ttft = t.elapsed().as_secs_f64() * 1e3;
            e.abort(id);
            return Ok((ttft, added));
        }
        if !e.has_work() {
            return Err(Error::Internal("the request ended without a token".into()));
        }
    }
}

/// Runs the comparison on `e` (built with room for `batch` sequences): `steps` timed decode steps each way (in
/// four alternating blocks),
/// `rounds` single requests each way for the time to first token.
pub fn run(e: &mut Engine, batch: usize, steps: usize, rounds: usize) -> Result<GuidedReport> {
    let text = "Write a short story about a fox as a JSON object with a title, the story, tags and a year. ".repeat(2);
    let prompt = e.tokenizer().encode(&text, true)?;
    // Warm-up: one short request each way.
    decode(e, &prompt, batch, 2, false, 1_000)?;
    decode(e, &prompt, batch, 2, true, 2_000)?;
    // Unconstrained and guided in alternating blocks, so that the machine's drift (other tenants, clocks) hits both.
    let (mut plain, mut guided, mut mask) = (Vec::new(), Vec::new(), 0.0);
    let blocks = 4;
    for b in 0..blocks as u64 {
        plain.extend(decode(e, &prompt, batch, steps.div_ceil(blocks), false, 3_000 + 100 * b)?.0);
        let (t, m) = decode(e, &prompt, batch, steps.div_ceil(blocks), true, 4_000 + 100 * b)?;
        guided.extend(t);
        mask += m;
    }
    let (mut ttft_plain, mut ttft_guided, mut compile) = (Vec::new(), Vec::new(), Vec::new());
    let vocab = e.logits_width() as u32;
    for r in 0..rounds {
        let mut p = prompt.clone();
        p[1] = 100 + (r as u32 * 2) % (vocab - 200);
        ttft_plain.push(first_token(e, &p, None, 5_000 + r as u64)?.0);
        p[1] += 1;
        let (t, c) = first_token(e, &p, Some(Guide::JsonSchema(schema(r + 1))), 6_000 + r as u64)?;
        ttft_guided.push(t);
        compile.push(c);
    }
    let (plain_steps, guided_steps) = (plain.len(), guided.len());
    let (p, g) = (median(plain), median(guided));
    Ok(GuidedReport {
        batch,
        vocab: vocab as usize,
        plain_steps,
        guided_steps,
        plain_ms_per_step: p,
        guided_ms_per_step: g,
        overhead: g / p - 1.0,
        mask_ms_per_step: mask / guided_steps.max(1) as f64,
        compile_ms: median(compile),
        ttft_plain_ms: median(ttft_plain),
        ttft_guided_ms: median(ttft_guided),
    })
}
