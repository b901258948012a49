//! The `TRITONBACKEND_*` entry points Triton calls. Each is a thin shim: `no_unwind` (the one `catch_unwind`)
//! around a `Result` body, the error mapped once by `error::to_triton`. State: `ModelState` per model,
//! `InstanceState` per instance.
#![allow(unsafe_code)]
// The entry points take Triton's raw pointers by the C ABI's contract; they are only called by Triton.
#![allow(clippy::not_unsafe_ptr_arg_deref)]
use super::error::{TritonLogger, check, new_error, read_cstr, to_triton};
use super::ffi::{self, Err};
use super::interface::{max_prompt_bytes, parse_job};
use super::metrics::{NoMetrics, TritonMetrics};
use super::model::{ModelSettings, autocomplete};
use super::request::RequestPtr;
use super::response::{TritonSink, now_ns};
use super::server::{EngineHandle, Observer, Submission};
use crate::{Error, Result};
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::ptr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

static LOGGER: TritonLogger = TritonLogger;
static MODEL_KEYS: AtomicU64 = AtomicU64::new(1);

/// Runs `f`, turning a panic into its message (logged under `what`): the one place panics stop before the FFI.
fn no_unwind<T>(what: &str, f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        log::error!("{what}: panic: {msg}");
        msg
    })
}

/// Runs an entry point body: errors become Triton errors, panics become INTERNAL errors.
fn shim(what: &str, f: impl FnOnce() -> Result<()>) -> Err {
    match no_unwind(what, f) {
        Ok(Ok(())) => ptr::null_mut(),
        Ok(Err(e)) => {
            log::error!("{what}: {e}");
            to_triton(&e)
        }
        Err(msg) => new_error(ffi::ERROR_INTERNAL, &format!("{what}: internal panic: {msg}")),
    }
}

struct ModelState {
    name: String,
    settings: ModelSettings,
    engine: Arc<EngineHandle>,
    obs: Arc<dyn Observer>,
    key: u64,
}

impl Drop for ModelState {
    fn drop(&mut self) {
        self.engine.detach(self.key);
    }
}

struct InstanceState {
    model: *const ModelState,
}

fn model_config(model: *mut ffi::TRITONBACKEND_Model) -> Result<serde_json::Value> {
    let mut msg = ptr::null_mut();
    // SAFETY: live model; valid out-pointers; the message is deleted after its JSON is copied.
    unsafe {
        check(ffi::TRITONBACKEND_ModelConfig(model, 1, &mut msg), "ModelConfig")?;
        let (mut base, mut size) = (ptr::null(), 0usize);
        let r = check(ffi::TRITONSERVER_MessageSerializeToJson(msg, &mut base, &mut size), "MessageSerializeToJson")
            .map(|_| std::slice::from_raw_parts(base.cast::<u8>(), size).to_vec());
        let _ = check(ffi::TRITONSERVER_MessageDelete(msg), "MessageDelete");
        serde_json::from_slice(&r?).map_err(|e| Error::Internal(format!("model config JSON: {e}")))
    }
}

fn set_model_config(model: *mut ffi::TRITONBACKEND_Model, cfg: &serde_json::Value) -> Result<()> {
    let s = cfg.to_string();
    let mut msg = ptr::null_mut();
    // SAFETY: `s` outlives the call (Triton copies it); the message is deleted after ModelSetConfig.
    unsafe {
        check(
            ffi::TRITONSERVER_MessageNewFromSerializedJson(&mut msg, s.as_ptr() as *const _, s.len()),
            "MessageNewFromSerializedJson",
        )?;
        let r = check(ffi::TRITONBACKEND_ModelSetConfig(model, 1, msg), "ModelSetConfig");
        let _ = check(ffi::TRITONSERVER_MessageDelete(msg), "MessageDelete");
        r
    }
}

/// Contract: called once when Triton loads the backend, before any model. Checks the API version (1.19+, for
/// histogram metrics) and routes `log` to Triton's logger. An error here fails the backend load.
#[unsafe(no_mangle)]
pub extern "C" fn TRITONBACKEND_Initialize(backend: *mut ffi::TRITONBACKEND_Backend) -> Err {
    shim("TRITONBACKEND_Initialize", || {
        if log::set_logger(&LOGGER).is_ok() {
            log::set_max_level(log::LevelFilter::Info);
        }
        let (mut major, mut minor, mut name) = (0u32, 0u32, ptr::null());
        // SAFETY: valid out-pointers; `backend` is live during the call.
        check(unsafe { ffi::TRITONBACKEND_ApiVersion(&mut major, &mut minor) }, "ApiVersion")?;
        check(unsafe { ffi::TRITONBACKEND_BackendName(backend, &mut name) }, "BackendName")?;
        log::info!("backend `{}`: Triton backend API {major}.{minor}", unsafe { read_cstr(name) });
        if major != 1 || minor < 19 {
            return Err(Error::UnsupportedFormat {
                path: PathBuf::from("tritonserver"),
                format: format!("backend API {major}.{minor}"),
                hint: "libtriton_llama needs API 1.19 or newer (Triton 24.08+)".into(),
            });
        }
        Ok(())
    })
}

/// Contract: called once per model load, before its instances. Reads (and auto-completes) the config, gets the
/// shared engine (loading the checkpoint if no twin model has), and stores `ModelState`. An error fails the load.
#[unsafe(no_mangle)]
pub extern "C" fn TRITONBACKEND_ModelInitialize(model: *mut ffi::TRITONBACKEND_Model) -> Err {
    shim("TRITONBACKEND_ModelInitialize", || {
        let (mut name, mut version, mut art, mut loc, mut auto) = (ptr::null(), 0u64, 0u32, ptr::null(), false);
        // SAFETY: live model; valid out-pointers; strings live as long as the model.
        check(unsafe { ffi::TRITONBACKEND_ModelName(model, &mut name) }, "ModelName")?;
        check(unsafe { ffi::TRITONBACKEND_ModelVersion(model, &mut version) }, "ModelVersion")?;
        check(unsafe { ffi::TRITONBACKEND_ModelRepository(model, &mut art, &mut loc) }, "ModelRepository")?;
        check(unsafe { ffi::TRITONBACKEND_ModelAutoCompleteConfig(model, &mut auto) }, "ModelAutoCompleteConfig")?;
        let (name, dir) = unsafe { (read_cstr(name), PathBuf::from(read_cstr(loc))) };
        let mut cfg = model_config(model)?;
        if auto && autocomplete(&mut cfg) {
            log::info!("{name}: auto-completed inputs/outputs/max_batch_size");
            set_model_config(model, &cfg)?;
        }
        let mut settings =
            ModelSettings::from_config(&cfg, &dir).map_err(|e| Error::Config(format!("model `{name}`: {e}")))?;
        let engine = super::registry::acquire(&settings)?;
        let tokens = settings.serve.max_input_len.unwrap_or(engine.info.max_model_len.saturating_sub(1));
        settings.limits.max_input_tokens = tokens;
        settings.limits.max_prompt_bytes = max_prompt_bytes(tokens, engine.info.longest_piece_bytes);
        let obs: Arc<dyn Observer> = match TritonMetrics::new(&name, version) {
            Ok(m) => Arc::new(m),
            Err(e) => {
                log::warn!("{name}: metrics disabled: {e}");
                Arc::new(NoMetrics)
            }
        };
        let key = MODEL_KEYS.fetch_add(1, Ordering::SeqCst);
        engine.attach(key, obs.clone());
        log::info!(
            "{name} v{version}: serving {} (decoupled: {}, max_model_len {}, {} KV blocks, \
             prompts up to {} tokens / {} bytes)",
            settings.checkpoint.display(),
            settings.limits.decoupled,
            engine.info.max_model_len,
            engine.info.kv_blocks_total,
            settings.limits.max_input_tokens,
            settings.limits.max_prompt_bytes
        );
        let state = Box::new(ModelState { name, settings, engine, obs, key });
        // SAFETY: ownership of the box passes to Triton until ModelFinalize takes it back.
        check(unsafe { ffi::TRITONBACKEND_ModelSetState(model, Box::into_raw(state) as *mut c_void) }, "ModelSetState")
    })
}

/// Contract: called once when the model unloads, after all its instances are finalized (so every request of
/// this model has been released). Drops `ModelState`; the last twin to go stops the engine thread.
#[unsafe(no_mangle)]
pub extern "C" fn TRITONBACKEND_ModelFinalize(model: *mut ffi::TRITONBACKEND_Model) -> Err {
    shim("TRITONBACKEND_ModelFinalize", || {
        let mut p = ptr::null_mut();
        // SAFETY: the state was set by ModelInitialize from a Box and is taken back exactly once here.
        check(unsafe { ffi::TRITONBACKEND_ModelState(model, &mut p) }, "ModelState")?;
        if !p.is_null() {
            let state = unsafe { Box::from_raw(p as *mut ModelState) };
            log::info!("{}: finalizing (every request of it has been released)", state.name);
            drop(state);
        }
        Ok(())
    })
}

/// Contract: called per instance of `instance_group`, after ModelInitialize. Instances only point at the
/// model state: all of them feed the one engine thread.
#[unsafe(no_mangle)]
pub extern "C" fn TRITONBACKEND_ModelInstanceInitialize(instance: *mut ffi::TRITONBACKEND_ModelInstance) -> Err {
    shim("TRITONBACKEND_ModelInstanceInitialize", || {
        let (mut model, mut p) = (ptr::null_mut(), ptr::null_mut());
        // SAFETY: live instance; its model's state outlives the instance.
        check(unsafe { ffi::TRITONBACKEND_ModelInstanceModel(instance, &mut model) }, "ModelInstanceModel")?;
        check(unsafe { ffi::TRITONBACKEND_ModelState(model, &mut p) }, "ModelState")?;
        let state = Box::new(InstanceState { model: p as *const ModelState });
        check(
            unsafe { ffi::TRITONBACKEND_ModelInstanceSetState(instance, Box::into_raw(state) as *mut c_void) },
            "ModelInstanceSetState",
        )
    })
}

/// Contract: called when the instance goes away; Triton has already waited for its requests to be released.
#[unsafe(no_mangle)]
pub extern "C" fn TRITONBACKEND_ModelInstanceFinalize(instance: *mut ffi::TRITONBACKEND_ModelInstance) -> Err {
    shim("TRITONBACKEND_ModelInstanceFinalize", || {
        let mut p = ptr::null_mut();
        // SAFETY: set from a Box by ModelInstanceInitialize; taken back exactly once.
        check(unsafe { ffi::TRITONBACKEND_ModelInstanceState(instance, &mut p) }, "ModelInstanceState")?;
        if !p.is_null() {
            drop(unsafe { Box::from_raw(p as *mut InstanceState) });
        }
        Ok(())
    })
}

/// Contract: Triton hands over `count` requests. We take ownership of every one at once and always return
/// success (null): from then on each request is answered and released exactly once by its `TritonSink`,
/// either right here (a bad input, a full queue) or later by the engine thread. Execute never waits on
/// generation: it parses, enqueues and returns.
#[unsafe(no_mangle)]
pub extern "C" fn TRITONBACKEND_ModelInstanceExecute(
    instance: *mut ffi::TRITONBACKEND_ModelInstance,
    requests: *mut *mut ffi::TRITONBACKEND_Request,
    count: u32,
) -> Err {
    let start = now_ns();
    let mut state = ptr::null_mut();
    // SAFETY: live instance; the state was set in ModelInstanceInitialize.
    let got = check(unsafe { ffi::TRITONBACKEND_ModelInstanceState(instance, &mut state) }, "ModelInstanceState");
    if got.is_err() || state.is_null() || requests.is_null() {
        // Nothing taken over yet: Triton answers and releases the requests itself.
        return new_error(ffi::ERROR_INTERNAL, "execute: the instance has no state");
    }
    // SAFETY: Triton passes `count` valid request pointers.
    let reqs: Vec<RequestPtr> =
        unsafe { std::slice::from_raw_parts(requests, count as usize) }.iter().map(|r| RequestPtr(*r)).collect();
    // SAFETY: the model state outlives its instances.
    let model: &ModelState = unsafe { &*(*(state as *const InstanceState)).model };
    for req in reqs {
        // A panic here drops the sink, which answers the request with INTERNAL and releases it.
        let _ = no_unwind(&model.name, || {
            let Some(mut sink) = TritonSink::new(req, instance, start) else { return };
            let parsed =
                req.inputs().and_then(|inputs| parse_job(&inputs, &req.requested_outputs()?, &model.settings.limits));
            match parsed {
                Ok(spec) => {
                    sink.set_outputs(spec.outputs.clone(), spec.stream);
                    model.engine.submit(Submission { spec, sink: Box::new(sink), obs: model.obs.clone() });
                }
                Err(e) => {
                    log::info!("{}: request `{}` refused: {e}", model.name, req.id());
                    // Inputs unreadable: one request, prompts unknown.
                    model.obs.finished(super::server::EndReason::Rejected, 1);
                    super::server::Sink::fail(&mut sink, &e);
                }
            }
        });
    }
    let end = now_ns();
    // SAFETY: live instance.
    let _ = check(
        unsafe {
            ffi::TRITONBACKEND_ModelInstanceReportBatchStatistics(instance, count as u64, start, start, end, end)
        },
        "ReportBatchStatistics",
    );
    ptr::null_mut()
}
