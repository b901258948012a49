//! Prometheus metrics through Triton's metric API (served on Triton's metrics port next to its own):
//! finished requests by reason, prompt/generated token counters, running/waiting and KV-block gauges (used,
//! cached, free, total), prefix-cache query/hit token counters, and
//! TTFT / TPOT / end-to-end histograms, `llama_engine_up` (API 1.19 `MetricArgs`), all labelled `model` and `version`.
#![allow(unsafe_code)]
use super::error::{check, cstring};
use super::ffi;
use super::server::{EndReason, Observer};
use crate::Result;
use std::ptr;
use std::sync::OnceLock;

const TTFT_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const TPOT_BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
const E2E_BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

struct Fam(*mut ffi::TRITONSERVER_MetricFamily);
// SAFETY: metric families are immutable handles, thread-safe in Triton; they live for the process.
unsafe impl Send for Fam {}
unsafe impl Sync for Fam {}

struct Families {
    finished: Fam,
    prompt: Fam,
    generated: Fam,
    running: Fam,
    waiting: Fam,
    in_flight: Fam,
    kv_used: Fam,
    kv_cached: Fam,
    kv_free: Fam,
    kv_total: Fam,
    prefix_queries: Fam,
    prefix_hits: Fam,
    ttft: Fam,
    tpot: Fam,
    e2e: Fam,
    up: Fam,
}

static FAMILIES: OnceLock<std::result::Result<Families, String>> = OnceLock::new();

fn family(kind: u32, name: &str, desc: &str) -> Result<Fam> {
    let (n, d) = (cstring(name), cstring(desc));
    let mut f = ptr::null_mut();
    // SAFETY: valid out-pointer and C strings.
    check(unsafe { ffi::TRITONSERVER_MetricFamilyNew(&mut f, kind, n.as_ptr(), d.as_ptr()) }, name)?;
    Ok(Fam(f))
}

fn families() -> std::result::Result<&'static Families, String> {
    FAMILIES.get_or_init(|| make_families().map_err(|e| e.to_string())).as_ref().map_err(|e| e.clone())
}

fn make_families() -> Result<Families> {
    let (c, g, h) = (ffi::METRIC_COUNTER, ffi::METRIC_GAUGE, ffi::METRIC_HISTOGRAM);
    Ok(Families {
        finished: family(
            c,
            "llama_requests_finished_total",
            "Prompts finished, by reason (stop, length, cancelled, error, rejected)",
        )?,
        prompt: family(c, "llama_prompt_tokens_total", "Prompt tokens admitted")?,
        generated: family(c, "llama_generation_tokens_total", "Tokens generated")?,
        running: family(g, "llama_num_requests_running", "Sequences in the running batch")?,
        waiting: family(g, "llama_num_requests_waiting", "Sequences waiting for admission")?,
        in_flight: family(
            g,
            "llama_num_requests_in_flight",
            "Prompts received by the backend and not yet answered in full (queued, waiting or running)",
        )?,
        kv_used: family(g, "llama_kv_cache_blocks_used", "KV-cache blocks in use")?,
        kv_cached: family(
            g,
            "llama_kv_cache_blocks_cached",
            "KV-cache blocks no sequence holds that keep a reusable prefix (evicted LRU when needed)",
        )?,
        kv_free: family(g, "llama_kv_cache_blocks_free", "KV-cache blocks holding nothing")?,
        kv_total: family(g, "llama_kv_cache_blocks_total", "KV-cache blocks in the pool")?,
        prefix_queries: family(
            c,
            "llama_prefix_cache_queries_tokens_total",
            "Prompt tokens looked up in the prefix cache at admission",
        )?,
        prefix_hits: family(
            c,
            "llama_prefix_cache_hits_tokens_total",
            "Prompt tokens found in the prefix cache (their prefill was skipped)",
        )?,
        ttft: family(h, "llama_time_to_first_token_seconds", "Time from arrival to the first generated token")?,
        tpot: family(h, "llama_time_per_output_token_seconds", "Mean time between generated tokens, per sequence")?,
        e2e: family(h, "llama_e2e_request_latency_seconds", "Time from arrival to the final response")?,
        up: family(
            g,
            "llama_engine_up",
            "1 while the model's engine thread serves, 0 after it stopped (a fatal error: reload or restart)",
        )?,
    })
}

struct M(*mut ffi::TRITONSERVER_Metric);

fn metric(f: &Fam, labels: &[(&str, &str)], buckets: Option<&[f64]>) -> Result<M> {
    let owned: Vec<_> = labels.iter().map(|(k, v)| (cstring(k), cstring(v))).collect();
    // SAFETY: each parameter copies its name and value; all are deleted below after the metric is made.
    let params: Vec<*const ffi::TRITONSERVER_Parameter> = owned
        .iter()
        .map(|(k, v)| unsafe {
            ffi::TRITONSERVER_ParameterNew(k.as_ptr(), ffi::PARAMETER_STRING, v.as_ptr() as *const _)
        } as *const _)
        .collect();
    let mut m = ptr::null_mut();
    let r = match buckets {
        None => check(
            unsafe { ffi::TRITONSERVER_MetricNew(&mut m, f.0, params.as_ptr(), params.len() as u64) },
            "MetricNew",
        ),
        Some(b) => (|| {
            let mut args = ptr::null_mut();
            // SAFETY: valid out-pointer; `b` outlives the call; args deleted after use.
            check(unsafe { ffi::TRITONSERVER_MetricArgsNew(&mut args) }, "MetricArgsNew")?;
            let r = check(
                unsafe { ffi::TRITONSERVER_MetricArgsSetHistogram(args, b.as_ptr(), b.len() as u64) },
                "MetricArgsSetHistogram",
            )
            .and_then(|_| {
                check(
                    unsafe {
                        ffi::TRITONSERVER_MetricNewWithArgs(&mut m, f.0, params.as_ptr(), params.len() as u64, args)
                    },
                    "MetricNewWithArgs",
                )
            });
            let _ = check(unsafe { ffi::TRITONSERVER_MetricArgsDelete(args) }, "MetricArgsDelete");
            r
        })(),
    };
    for p in params {
        // SAFETY: created above, not used after this.
        unsafe { ffi::TRITONSERVER_ParameterDelete(p as *mut _) };
    }
    r.map(|_| M(m))
}

/// One model's metrics.
pub struct TritonMetrics {
    finished: Vec<(EndReason, M)>,
    prompt: M,
    generated: M,
    running: M,
    waiting: M,
    in_flight: M,
    kv_used: M,
    kv_cached: M,
    kv_free: M,
    kv_total: M,
    prefix_queries: M,
    prefix_hits: M,
    ttft: M,
    tpot: M,
    e2e: M,
    up: M,
}

// SAFETY: Triton metrics are internally synchronized (prometheus-cpp); handles are freed only on drop.
unsafe impl Send for TritonMetrics {}
unsafe impl Sync for TritonMetrics {}

impl TritonMetrics {
    pub fn new(model: &str, version: u64) -> Result<TritonMetrics> {
        let f = families().map_err(crate::Error::Internal)?;
        let v = version.to_string();
        let l = [("model", model), ("version", v.as_str())];
        let finished = EndReason::ALL
            .iter()
            .map(|&r| metric(&f.finished, &[l[0], l[1], ("reason", r.as_str())], None).map(|m| (r, m)))
            .collect::<Result<Vec<_>>>()?;
        Ok(TritonMetrics {
            finished,
            prompt: metric(&f.prompt, &l, None)?,
            generated: metric(&f.generated, &l, None)?,
            running: metric(&f.running, &l, None)?,
            waiting: metric(&f.waiting, &l, None)?,
            in_flight: metric(&f.in_flight, &l, None)?,
            kv_used: metric(&f.kv_used, &l, None)?,
            kv_cached: metric(&f.kv_cached, &l, None)?,
            kv_free: metric(&f.kv_free, &l, None)?,
            kv_total: metric(&f.kv_total, &l, None)?,
            prefix_queries: metric(&f.prefix_queries, &l, None)?,
            prefix_hits: metric(&f.prefix_hits, &l, None)?,
            ttft: metric(&f.ttft, &l, Some(&TTFT_BUCKETS))?,
            tpot: metric(&f.tpot, &l, Some(&TPOT_BUCKETS))?,
            e2e: metric(&f.e2e, &l, Some(&E2E_BUCKETS))?,
            up: metric(&f.up, &l, None)?,
        })
    }
}

fn inc(m: &M, v: f64) {
    // SAFETY: live metric handle.
    let _ = check(unsafe { ffi::TRITONSERVER_MetricIncrement(m.0, v) }, "MetricIncrement");
}
fn set(m: &M, v: f64) {
    // SAFETY: live metric handle.
    let _ = check(unsafe { ffi::TRITONSERVER_MetricSet(m.0, v) }, "MetricSet");
}
fn observe(m: &M, v: f64) {
    // SAFETY: live metric handle.
    let _ = check(unsafe { ffi::TRITONSERVER_MetricObserve(m.0, v) }, "MetricObserve");
}

impl Observer for TritonMetrics {
    fn finished(&self, reason: EndReason, prompts: usize) {
        if let Some((_, m)) = self.finished.iter().find(|(r, _)| *r == reason) {
            inc(m, prompts as f64);
        }
    }
    fn tokens(&self, prompt: usize, generated: usize) {
        if prompt > 0 {
            inc(&self.prompt, prompt as f64);
        }
        if generated > 0 {
            inc(&self.generated, generated as f64);
        }
    }
    fn gauges(&self, running: usize, waiting: usize, kv_used: usize, kv_total: usize, in_flight: usize) {
        set(&self.in_flight, in_flight as f64);
        set(&self.running, running as f64);
        set(&self.waiting, waiting as f64);
        set(&self.kv_used, kv_used as f64);
        set(&self.kv_total, kv_total as f64);
    }
    fn kv_split(&self, cached: usize, free: usize) {
        set(&self.kv_cached, cached as f64);
        set(&self.kv_free, free as f64);
    }
    fn prefix_cache(&self, queries: u64, hits: u64) {
        if queries > 0 {
            inc(&self.prefix_queries, queries as f64);
        }
        if hits > 0 {
            inc(&self.prefix_hits, hits as f64);
        }
    }
    fn ttft(&self, s: f64) {
        observe(&self.ttft, s);
    }
    fn tpot(&self, s: f64) {
        observe(&self.tpot, s);
    }
    fn e2e(&self, s: f64) {
        observe(&self.e2e, s);
    }
    fn engine_up(&self, up: bool) {
        set(&self.up, if up { 1.0 } else { 0.0 });
    }
}

impl Drop for M {
    fn drop(&mut self) {
        // SAFETY: created by MetricNew*, deleted exactly once here.
        let _ = check(unsafe { ffi::TRITONSERVER_MetricDelete(self.0) }, "MetricDelete");
    }
}

/// Used when metrics cannot be created: serving goes on without them.
pub struct NoMetrics;
impl Observer for NoMetrics {
    fn finished(&self, _: EndReason, _: usize) {}
    fn tokens(&self, _: usize, _: usize) {}
    fn gauges(&self, _: usize, _: usize, _: usize, _: usize, _: usize) {}
    fn ttft(&self, _: f64) {}
    fn tpot(&self, _: f64) {}
    fn e2e(&self, _: f64) {}
}
