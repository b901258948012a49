//! The prompt-token budget of a step that also carries decode rows, derived from measured step times (plain
//! numbers, no clock): a decode step costs about one pass over the weights, each prompt token adds its own
//! compute; the budget is the number of prompt tokens whose cost is `(slowdown - 1)` decode steps, so a running
//! stream's next token is delayed by at most that factor while a long prompt is prefilled beside it.

/// Running estimates of the cost of a decode-only step and of one prompt token.
#[derive(Debug, Clone)]
pub struct StepCost {
    /// Allowed step time while streams decode, as a multiple of a decode-only step.
    slowdown: f64,
    /// Budget before anything is measured, and its bounds.
    initial: usize,
    min: usize,
    max: usize,
    decode_ms: Option<f64>,
    token_ms: Option<f64>,
}

/// Weight of a new sample in the running averages.
const ALPHA: f64 = 0.25;

fn ema(old: Option<f64>, x: f64) -> Option<f64> {
    Some(old.map_or(x, |o| o + ALPHA * (x - o)))
}

impl StepCost {
    /// `initial` until both costs are known; always within `min..=max`.
    pub fn new(slowdown: f64, initial: usize, min: usize, max: usize) -> StepCost {
        StepCost { slowdown, initial: initial.clamp(min, max), min, max, decode_ms: None, token_ms: None }
    }

    /// A step ran in `ms` with `decode_rows` one-token rows and `prompt_tokens` other tokens.
    pub fn record(&mut self, ms: f64, decode_rows: usize, prompt_tokens: usize) {
        if !(ms.is_finite() && ms > 0.0) {
            return;
        }
        if prompt_tokens == 0 {
            if decode_rows > 0 {
                self.decode_ms = ema(self.decode_ms, ms);
            }
            return;
        }
        // Without a decode-only step yet, charge the whole step to its prompt tokens (an overestimate: a
        // smaller budget, never a larger one).
        let extra = (ms - self.decode_ms.unwrap_or(0.0)).max(0.05 * ms);
        self.token_ms = ema(self.token_ms, extra / prompt_tokens as f64);
    }

    /// Prompt tokens a step with decode rows may carry.
    pub fn budget(&self) -> usize {
        match (self.decode_ms, self.token_ms) {
            (Some(d), Some(t)) if t > 0.0 => {
                let n = ((self.slowdown - 1.0) * d / t).floor();
                (n.min(self.max as f64) as usize).clamp(self.min, self.max)
            }
            _ => self.initial,
        }
    }

    pub fn decode_ms(&self) -> Option<f64> {
        self.decode_ms
    }
    pub fn token_ms(&self) -> Option<f64> {
        self.token_ms
    }
}
