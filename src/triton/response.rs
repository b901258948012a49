//! Answers one Triton request through its response factory: builds the requested output tensors, sends with
//! the FINAL flag on the last response, reports statistics and releases the request exactly once (also on
//! drop, e.g. when the engine thread unwinds, with an INTERNAL error if no answer went out).
#![allow(unsafe_code)]
use super::error::{cancelled_error, check, new_error, to_triton};
use super::ffi;
use super::interface::OutputSet;
use super::request::RequestPtr;
use super::server::{RowReply, Sink};
use super::tensors::encode_bytes;
use crate::{Error, Result};
use std::ffi::c_void;
use std::ptr;

/// Monotonic nanoseconds, the clock Triton's statistics use.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub struct TritonSink {
    request: RequestPtr,
    factory: *mut ffi::TRITONBACKEND_ResponseFactory,
    instance: *mut ffi::TRITONBACKEND_ModelInstance,
    outputs: OutputSet,
    exec_start_ns: u64,
    /// Streaming: data responses go out without FINAL and a flag-only FINAL closes the stream (pytriton's
    /// DecoupledModelClient drops the data of a response that carries FINAL).
    stream: bool,
    /// Set once the request is released: every later call is a no-op.
    released: bool,
}

// SAFETY: Triton allows responses, factory calls and release from any thread; the sink is used by one thread
// at a time (moved into the engine thread).
unsafe impl Send for TritonSink {}

impl TritonSink {
    /// Takes charge of `request`. On failure to make a factory the request is answered and released here.
    pub fn new(
        request: RequestPtr,
        instance: *mut ffi::TRITONBACKEND_ModelInstance,
        exec_start_ns: u64,
    ) -> Option<TritonSink> {
        let mut factory = ptr::null_mut();
        // SAFETY: `request` is live and owned by us; valid out-pointer.
        if let Err(e) =
            check(unsafe { ffi::TRITONBACKEND_ResponseFactoryNew(&mut factory, request.0) }, "ResponseFactoryNew")
        {
            log::error!("{e}");
            // SAFETY: answer directly and release once; the error object is deleted after the send.
            unsafe {
                let mut resp = ptr::null_mut();
                if ffi::TRITONBACKEND_ResponseNew(&mut resp, request.0).is_null() && !resp.is_null() {
                    let err = to_triton(&e);
                    let _ =
                        check(ffi::TRITONBACKEND_ResponseSend(resp, ffi::RESPONSE_COMPLETE_FINAL, err), "ResponseSend");
                    ffi::TRITONSERVER_ErrorDelete(err);
                }
                let _ = check(ffi::TRITONBACKEND_RequestRelease(request.0, ffi::REQUEST_RELEASE_ALL), "RequestRelease");
            }
            return None;
        }
        Some(TritonSink {
            request,
            factory,
            instance,
            outputs: OutputSet::default(),
            exec_start_ns,
            stream: false,
            released: false,
        })
    }

    pub fn set_outputs(&mut self, o: OutputSet, stream: bool) {
        self.outputs = o;
        self.stream = stream;
    }

    /// Statistics, request release and factory deletion: exactly once.
    fn finish(&mut self, success: bool) {
        if self.released {
            return;
        }
        self.released = true;
        let end = now_ns();
        // SAFETY: the request and factory are live until here and never used again.
        unsafe {
            let _ = check(
                ffi::TRITONBACKEND_ModelInstanceReportStatistics(
                    self.instance,
                    self.request.0,
                    success,
                    self.exec_start_ns,
                    self.exec_start_ns,
                    end,
                    end,
                ),
                "ReportStatistics",
            );
            if let Err(e) =
                check(ffi::TRITONBACKEND_RequestRelease(self.request.0, ffi::REQUEST_RELEASE_ALL), "RequestRelease")
            {
                log::error!("{e}");
            }
            let _ = check(ffi::TRITONBACKEND_ResponseFactoryDelete(self.factory), "ResponseFactoryDelete");
        }
    }

    fn send_error(&mut self, err: ffi::Err) {
        if self.released {
            // SAFETY: we own `err`.
            unsafe { ffi::TRITONSERVER_ErrorDelete(err) };
            return;
        }
        // SAFETY: live factory; `ResponseSend` does not take ownership of `err`, so it is deleted after.
        unsafe {
            let mut resp = ptr::null_mut();
            match check(ffi::TRITONBACKEND_ResponseNewFromFactory(&mut resp, self.factory), "ResponseNewFromFactory") {
                Ok(()) => {
                    if let Err(e) =
                        check(ffi::TRITONBACKEND_ResponseSend(resp, ffi::RESPONSE_COMPLETE_FINAL, err), "ResponseSend")
                    {
                        log::error!("{e}");
                    }
                }
                Err(e) => {
                    log::error!("{e}");
                    let _ = check(
                        ffi::TRITONBACKEND_ResponseFactorySendFlags(self.factory, ffi::RESPONSE_COMPLETE_FINAL),
                        "SendFlags",
                    );
                }
            }
            ffi::TRITONSERVER_ErrorDelete(err);
        }
        self.finish(false);
    }

    fn add_output(
        resp: *mut ffi::TRITONBACKEND_Response,
        name: &str,
        dtype: u32,
        shape: &[i64],
        bytes: &[u8],
    ) -> Result<()> {
        let cname = super::error::cstring(name);
        let mut out = ptr::null_mut();
        // SAFETY: live response; `shape` outlives the call; Triton copies name and shape.
        check(
            unsafe {
                ffi::TRITONBACKEND_ResponseOutput(
                    resp,
                    &mut out,
                    cname.as_ptr(),
                    dtype,
                    shape.as_ptr(),
                    shape.len() as u32,
                )
            },
            "ResponseOutput",
        )?;
        if bytes.is_empty() {
            return Ok(());
        }
        let (mut buf, mut mem, mut mem_id): (*mut c_void, u32, i64) = (ptr::null_mut(), ffi::MEMORY_CPU, 0);
        // SAFETY: `out` was just created; we ask for CPU memory of exactly `bytes.len()`.
        check(
            unsafe { ffi::TRITONBACKEND_OutputBuffer(out, &mut buf, bytes.len() as u64, &mut mem, &mut mem_id) },
            "OutputBuffer",
        )?;
        if buf.is_null() || mem == ffi::MEMORY_GPU {
            return Err(Error::Internal(format!("output `{name}`: Triton gave no host buffer")));
        }
        // SAFETY: `buf` has room for `bytes.len()` bytes and does not overlap `bytes`.
        unsafe { ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len()) };
        Ok(())
    }

    fn fill(&self, resp: *mut ffi::TRITONBACKEND_Response, rows: &[RowReply]) -> Result<()> {
        let n = rows.len() as i64;
        for &name in &self.outputs.names {
            match name {
                "outputs" | "text_output" | "finish_reason" => {
                    let v: Vec<&str> = rows
                        .iter()
                        .map(|r| match name {
                            "outputs" => r.outputs.as_str(),
                            "text_output" => r.text_output.as_str(),
                            _ => r.finish_reason.map_or("", |f| f.as_str()),
                        })
                        .collect();
                    Self::add_output(resp, name, ffi::TYPE_BYTES, &[n, 1], &encode_bytes(&v))?;
                }
                "num_input_tokens" | "num_output_tokens" => {
                    let b: Vec<u8> = rows
                        .iter()
                        .flat_map(|r| {
                            if name == "num_input_tokens" { r.num_input_tokens } else { r.num_output_tokens }
                                .to_le_bytes()
                        })
                        .collect();
                    Self::add_output(resp, name, ffi::TYPE_INT32, &[n, 1], &b)?;
                }
                "output_tokens" => {
                    let t = rows.iter().map(|r| r.output_tokens.len()).max().unwrap_or(0).max(1);
                    let v = grid(rows, t, |r, j| r.output_tokens.get(j).map_or("", String::as_str));
                    Self::add_output(resp, name, ffi::TYPE_BYTES, &[n, t as i64], &encode_bytes(&v))?;
                }
                "batch_index" | "sequence_index" => {
                    let index = |i: usize| if name == "batch_index" { i as i32 } else { 0 };
                    let b: Vec<u8> = (0..rows.len()).flat_map(|i| index(i).to_le_bytes()).collect();
                    Self::add_output(resp, name, ffi::TYPE_INT32, &[n, 1], &b)?;
                }
                "cum_log_probs" => {
                    let b: Vec<u8> = rows.iter().flat_map(|r| r.cum_log_prob.to_le_bytes()).collect();
                    Self::add_output(resp, name, ffi::TYPE_FP32, &[n, 1], &b)?;
                }
                "output_log_probs" => {
                    let t = rows.iter().map(|r| r.output_log_probs.len()).max().unwrap_or(0).max(1);
                    let b = le(grid(rows, t, |r, j| r.output_log_probs.get(j).copied().unwrap_or(0.0).to_le_bytes()));
                    Self::add_output(resp, name, ffi::TYPE_FP32, &[n, t as i64], &b)?;
                }
                "context_logits" | "generation_logits" => {
                    let ctx = name == "context_logits";
                    fn of(r: &RowReply, ctx: bool) -> &[f32] {
                        if ctx { &r.context_logits } else { &r.generation_logits }
                    }
                    let w = rows.iter().map(|r| r.logits_width).max().unwrap_or(0);
                    let t = rows.iter().map(|r| of(r, ctx).len() / w.max(1)).max().unwrap_or(0);
                    if t == 0 {
                        continue; // nothing new in this streamed response
                    }
                    // [batch, tokens, vocab] (generation: [batch, beams = 1, tokens, vocab]), zero-padded.
                    let mut b = vec![0u8; rows.len() * t * w * 4];
                    for (i, r) in rows.iter().enumerate() {
                        for (j, x) in of(r, ctx).iter().enumerate() {
                            b[(i * t * w + j) * 4..][..4].copy_from_slice(&x.to_le_bytes());
                        }
                    }
                    let (t, w) = (t as i64, w as i64);
                    let shape: &[i64] = if ctx { &[n, t, w] } else { &[n, 1, t, w] };
                    Self::add_output(resp, name, ffi::TYPE_FP32, shape, &b)?;
                }
                "output_top_log_probs" | "output_top_token_ids" | "output_top_tokens" => {
                    let t = rows.iter().map(|r| r.top_logprobs.len()).max().unwrap_or(0);
                    if t == 0 {
                        continue; // no tokens in this streamed response
                    }
                    Self::add_top(resp, name, rows, t, |r, j| {
                        (slice(r.top_logprobs.get(j)), slice(r.top_tokens.get(j)))
                    })?;
                }
                "prompt_log_probs" | "prompt_token_ids" | "prompt_tokens" => {
                    let l = rows.iter().map(|r| r.prompt_logprobs.len()).max().unwrap_or(0);
                    if l == 0 {
                        continue; // sent with an earlier streamed response
                    }
                    let shape = [n, l as i64];
                    match name {
                        "prompt_tokens" => {
                            let v = grid(rows, l, |r, j| r.prompt_tokens.get(j).map_or("", String::as_str));
                            Self::add_output(resp, name, ffi::TYPE_BYTES, &shape, &encode_bytes(&v))?
                        }
                        "prompt_token_ids" => {
                            let b = le(grid(rows, l, |r, j| {
                                r.prompt_logprobs.get(j).map_or(-1, |c| c.token as i32).to_le_bytes()
                            }));
                            Self::add_output(resp, name, ffi::TYPE_INT32, &shape, &b)?
                        }
                        _ => {
                            let b = le(grid(rows, l, |r, j| {
                                r.prompt_logprobs.get(j).map_or(f32::NAN, |c| c.logprob).to_le_bytes()
                            }));
                            Self::add_output(resp, name, ffi::TYPE_FP32, &shape, &b)?
                        }
                    }
                }
                "prompt_top_log_probs" | "prompt_top_token_ids" | "prompt_top_tokens" => {
                    let l = rows.iter().map(|r| r.prompt_logprobs.len()).max().unwrap_or(0);
                    if l == 0 {
                        continue;
                    }
                    Self::add_top(resp, name, rows, l, |r, j| (prompt_top(r, j), slice(r.prompt_top_tokens.get(j))))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A `[rows, positions, k]` output of top log-probs (`*_log_probs`), their ids (`*_token_ids`) or texts
    /// (`*_tokens`): `at(row, position)` gives a position's (id, log-prob) list and its texts; short rows and lists
    /// are padded with -inf / -1 / "".
    fn add_top<'a>(
        resp: *mut ffi::TRITONBACKEND_Response,
        name: &str,
        rows: &'a [RowReply],
        positions: usize,
        at: impl Fn(&'a RowReply, usize) -> (&'a [(u32, f32)], &'a [String]),
    ) -> Result<()> {
        let k = rows.iter().flat_map(|r| (0..positions).map(|j| at(r, j).0.len())).max().unwrap_or(0).max(1);
        let shape = [rows.len() as i64, positions as i64, k as i64];
        let cell = |r: &'a RowReply, jc: usize| {
            let (top, texts) = at(r, jc / k);
            (top.get(jc % k).copied(), texts.get(jc % k).map_or("", String::as_str))
        };
        if name.ends_with("_tokens") {
            let v = grid(rows, positions * k, |r, jc| cell(r, jc).1);
            return Self::add_output(resp, name, ffi::TYPE_BYTES, &shape, &encode_bytes(&v));
        }
        if name.ends_with("_ids") {
            let b = le(grid(rows, positions * k, |r, jc| cell(r, jc).0.map_or(-1, |c| c.0 as i32).to_le_bytes()));
            return Self::add_output(resp, name, ffi::TYPE_INT32, &shape, &b);
        }
        let b = le(grid(rows, positions * k, |r, jc| cell(r, jc).0.map_or(f32::NEG_INFINITY, |c| c.1).to_le_bytes()));
        Self::add_output(resp, name, ffi::TYPE_FP32, &shape, &b)
    }
}

/// The cells of a `[rows, width]` output in row-major order: `cell(row, j)` for every j < width (a row shorter than
/// the width gives its padding there).
fn grid<'a, T>(rows: &'a [RowReply], width: usize, cell: impl Fn(&'a RowReply, usize) -> T) -> Vec<T> {
    rows.iter().flat_map(|r| (0..width).map(move |j| (r, j))).map(|(r, j)| cell(r, j)).collect()
}

/// Little-endian cells as one byte buffer.
fn le(cells: Vec<[u8; 4]>) -> Vec<u8> {
    cells.concat()
}

/// Prompt position j's alternatives (empty past the row's prompt).
fn prompt_top(r: &RowReply, j: usize) -> &[(u32, f32)] {
    r.prompt_logprobs.get(j).map_or(&[], |p| &p.top)
}

/// An optional list as a slice (empty when absent).
fn slice<T>(v: Option<&Vec<T>>) -> &[T] {
    v.map_or(&[], |v| &v[..])
}

impl Sink for TritonSink {
    fn is_cancelled(&self) -> bool {
        if self.released {
            return true;
        }
        let mut c = false;
        // SAFETY: live factory; valid out-pointer.
        let r = check(
            unsafe { ffi::TRITONBACKEND_ResponseFactoryIsCancelled(self.factory, &mut c) },
            "ResponseFactoryIsCancelled",
        );
        r.is_ok() && c
    }

    fn send(&mut self, rows: &[RowReply], last: bool) -> Result<()> {
        if self.released {
            return Err(Error::Internal("response after the request was released".into()));
        }
        let mut resp = ptr::null_mut();
        // SAFETY: live factory; valid out-pointer.
        check(unsafe { ffi::TRITONBACKEND_ResponseNewFromFactory(&mut resp, self.factory) }, "ResponseNewFromFactory")?;
        if let Err(e) = self.fill(resp, rows) {
            // SAFETY: the unsent response is ours to delete.
            unsafe { ffi::TRITONBACKEND_ResponseDelete(resp) };
            return Err(e);
        }
        let flags = if last && !self.stream { ffi::RESPONSE_COMPLETE_FINAL } else { 0 };
        // SAFETY: `resp` is complete; Triton takes it over on send.
        check(unsafe { ffi::TRITONBACKEND_ResponseSend(resp, flags, ptr::null_mut()) }, "ResponseSend")?;
        if last && self.stream {
            // SAFETY: live factory.
            check(
                unsafe { ffi::TRITONBACKEND_ResponseFactorySendFlags(self.factory, ffi::RESPONSE_COMPLETE_FINAL) },
                "ResponseFactorySendFlags",
            )?;
        }
        if last {
            self.finish(true);
        }
        Ok(())
    }

    fn fail(&mut self, e: &Error) {
        self.send_error(to_triton(e));
    }

    fn cancelled(&mut self) {
        self.send_error(cancelled_error());
    }
}

impl Drop for TritonSink {
    fn drop(&mut self) {
        if !self.released {
            self.send_error(new_error(
                ffi::ERROR_INTERNAL,
                "the backend dropped this request without an answer (see the server log)",
            ));
        }
    }
}
