//! Process-wide engines keyed by checkpoint and settings: `<name>` and `<name>_stream` (same parameters)
//! share one loaded engine. Reference-counted: the last model to let go stops the engine thread.
use super::model::ModelSettings;
use super::server::EngineHandle;
use crate::engine::Engine;
use crate::{Error, Result, loader};
use std::sync::{Arc, Mutex, Weak};

static ENGINES: Mutex<Vec<(String, Weak<EngineHandle>)>> = Mutex::new(Vec::new());

/// The engine for these settings, loading it (under the registry lock, so a concurrent twin waits) if needed.
pub fn acquire(s: &ModelSettings) -> Result<Arc<EngineHandle>> {
    let key = s.engine_key();
    let mut reg = ENGINES.lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|(_, w)| w.strong_count() > 0);
    if let Some(h) = reg.iter().find(|(k, _)| *k == key).and_then(|(_, w)| w.upgrade()) {
        log::info!("sharing the loaded engine for {}", s.checkpoint.display());
        return Ok(h);
    }
    let (path, ecfg, max_model_len) = (s.checkpoint.clone(), s.engine.clone(), s.engine.max_model_len);
    let open = move || -> Result<Engine> {
        let src = loader::open(&path)?;
        let mpe = src.config().max_position_embeddings;
        if let Some(m) = max_model_len
            && m > mpe
        {
            return Err(Error::Config(format!(
                "max_input_len + max_output_len = {m} exceeds the checkpoint's max_position_embeddings {mpe}"
            )));
        }
        log::info!("loading {} ({})", path.display(), src.format());
        Engine::new(src, ecfg)
    };
    let h = Arc::new(EngineHandle::start(open, s.serve.clone())?);
    reg.push((key, Arc::downgrade(&h)));
    Ok(h)
}
