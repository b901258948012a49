//! `triton-llama`: inspect, tokenize, generate with, score and benchmark Llama-2 checkpoints on the CPU or CUDA engine.
mod args;
use args::{Bos, Cli, Cmd, EngineOpts, PromptOrMessages, Sampling};
use clap::Parser;
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use triton_llama::engine::serve::{Prepared, PromptDefaults, PromptSpec};
use triton_llama::engine::{Device, Engine, EngineConfig, Timings};
use triton_llama::{Error, Result, loader};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    // Usage errors: clap's message naming the option, exit status 2; --help and --version: exit 0.
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Inspect { ckpt, out } => inspect(&ckpt, out.json),
        Cmd::Tokenize { ckpt, text, bos, out } => tokenize(&ckpt, &text, &bos, out.json),
        Cmd::Generate { ckpt, input, chat_template, sampling, bos, engine, out } => {
            generate(&ckpt, &input, chat_template.as_deref(), &sampling, &bos, &engine, out.json)
        }
        Cmd::Chat { ckpt, system, chat_template, sampling, engine, out } => {
            chat(&ckpt, system.as_deref(), chat_template.as_deref(), &sampling, &engine, out.json)
        }
        Cmd::RenderChat { ckpt, messages, chat_template, out, .. } => {
            render_chat(&ckpt, &messages, chat_template.as_deref(), out.json)
        }
        Cmd::Score { ckpt, prompt, ids, logits_out, bos, engine, out } => {
            score(&ckpt, prompt.as_deref(), ids, logits_out.as_deref(), &bos, &engine, out.json)
        }
        Cmd::Bench { checkpoint, weights, batches, steps, prefill, out } => {
            bench(checkpoint.as_deref(), weights, &batches, steps, &prefill, out.json)
        }
        Cmd::BenchGuided { ckpt, batch, steps, rounds, engine, out } => {
            bench_guided(&ckpt, batch, steps, rounds, &engine, out.json)
        }
        Cmd::DemoModel { dir } => triton_llama::demo::write(&dir),
        Cmd::BenchCuda { gpu, steps, batches, prefill, layers, shape, weights, kv_cache_dtype, contexts, out } => {
            let precision = triton_llama::backend::Precision { weights, kv: kv_cache_dtype };
            bench_cuda(gpu, steps, (&batches, &contexts), &prefill, (&shape, layers, precision), out.json)
        }
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(e),
    }
}

fn fail(e: Error) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(1)
}

fn print_json(v: serde_json::Value) {
    println!("{v}");
}

fn inspect(ckpt: &Path, json_out: bool) -> Result<()> {
    let src = loader::open(ckpt)?;
    let c = src.config();
    let tensors = src.tensors();
    let total: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>() * t.dtype.size()).sum();
    if json_out {
        print_json(json!({
            "format": src.format(),
            "config": {
                "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size, "num_layers": c.num_layers,
                "num_heads": c.num_heads, "num_kv_heads": c.num_kv_heads, "head_dim": c.head_dim,
                "vocab_size": c.vocab_size, "max_position_embeddings": c.max_position_embeddings,
                "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
                "rope_scaling": c.rope_scaling, "bos_id": c.bos_id, "eos_id": c.eos_id,
            },
            "params": c.num_params(),
            "bytes": total,
            "add_bos": src.default_add_bos(),
            "stop_strings": src.default_stop_strings(),
            "details": src.details().into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "tensors": tensors.iter().map(|t| json!({"name": t.name, "dtype": t.dtype.name(), "shape": t.shape,
                "bytes": t.shape.iter().product::<usize>() * t.dtype.size(), "origin": t.origin})).collect::<Vec<_>>(),
        }));
        return Ok(());
    }
    println!("format: {}", src.format());
    println!("config: {c:?}");
    println!("parameters: {} ({:.3} GB)", c.num_params(), total as f64 / 1e9);
    println!("add_bos: {}  stop strings: {:?}", src.default_add_bos(), src.default_stop_strings());
    for (k, v) in src.details() {
        println!("{k}: {v}");
    }
    for t in &tensors {
        println!(
            "{:<24} {:<5} {:<16} {:>12}  <- {}",
            t.name,
            t.dtype.name(),
            format!("{:?}", t.shape),
            t.shape.iter().product::<usize>() * t.dtype.size(),
            t.origin
        );
    }
    Ok(())
}

fn tokenize(ckpt: &Path, text: &str, bos: &Bos, json_out: bool) -> Result<()> {
    let src = loader::open(ckpt)?;
    let tok = src.tokenizer()?;
    let ids = tok.encode(text, bos.choice().unwrap_or(src.default_add_bos()))?;
    if json_out {
        print_json(json!({"ids": ids, "text": text}));
    } else {
        println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

fn engine_for(ckpt: &Path, o: &EngineOpts) -> Result<Engine> {
    Engine::new(loader::open(ckpt)?, engine_config(o)?)
}

/// The engine of the one-request commands: `--device`, `--tp` and `--weights`, one sequence.
fn engine_config(o: &EngineOpts) -> Result<EngineConfig> {
    let (device, tp) = match o.device.as_str() {
        "cpu" => (Device::Cpu, o.tp),
        dev => {
            let spec = dev
                .strip_prefix("cuda")
                .map(|r| r.trim_start_matches(':'))
                .ok_or_else(|| Error::InvalidRequest(format!("--device: `{dev}` is not cpu or cuda[:ids]")))?;
            let gpu_ids = if spec.is_empty() { (0..o.tp).collect() } else { list_str(spec, "device")? };
            (Device::Cuda { kv_fraction: 0.9, gpu_ids: gpu_ids.clone() }, gpu_ids.len())
        }
    };
    Ok(EngineConfig {
        device,
        tp,
        max_num_seqs: 1,
        weights: o.weights,
        kv_cache_dtype: o.kv_cache_dtype,
        ..Default::default()
    })
}

/// One prompt from the command line, as a frontend hands it to `Engine::prepare` (which adds the default and
/// chat-template stop strings and tokenizes the banned words, as for the server's requests). `chat`: `text` is
/// a JSON list of messages.
fn prompt_spec(s: &Sampling, bos: Option<bool>, text: String, chat: bool) -> PromptSpec {
    let add_bos = if chat { None } else { bos };
    PromptSpec { text, params: s.params(), bad_words: s.ban.clone(), bias_words: Vec::new(), add_bos, chat }
}

/// `--no-default-stops` drops the checkpoint's stop strings.
fn prompt_defaults(s: &Sampling) -> PromptDefaults {
    PromptDefaults { stop_strings: s.no_default_stops.then(Vec::new), ..Default::default() }
}

/// What one generation produced.
struct Generated {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    /// Per token: its `--top-logprobs` alternatives (id, log-prob).
    top: Vec<Vec<(u32, f32)>>,
    /// With `--prompt-logprobs`: each prompt token's log-prob (null for the first) and alternatives.
    prompt: Vec<triton_llama::engine::TokenLogprob>,
    reason: &'static str,
    timings: Option<Timings>,
}

/// Runs one request to the end, streaming its text to stdout unless `quiet`.
fn run_one(engine: &mut Engine, p: Prepared, quiet: bool) -> Result<Generated> {
    engine.add_request(p.request)?;
    let (ids, text, logprobs, top, prompt) = Default::default();
    let mut g = Generated { ids, text, logprobs, top, prompt, reason: "", timings: None };
    let mut stdout = std::io::stdout();
    let mut failed = None;
    engine.run_to_completion(|o| {
        if let Some(e) = &o.error {
            failed = Some(Error::InvalidRequest(e.clone()));
        }
        if let Some(t) = o.token {
            g.ids.push(t);
            g.logprobs.push(o.logprob);
            g.top.push(o.top_logprobs.clone());
        }
        if !o.prompt_logprobs.is_empty() {
            g.prompt = o.prompt_logprobs.clone();
        }
        g.text.push_str(&o.text);
        if !quiet {
            let _ = write!(stdout, "{}", o.text);
            let _ = stdout.flush();
        }
        if let Some(f) = o.finish {
            g.reason = f.as_str();
        }
        if o.timings.is_some() {
            g.timings = o.timings.clone();
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(g),
    }
}

fn generate(
    ckpt: &Path,
    input: &PromptOrMessages,
    chat_template: Option<&str>,
    s: &Sampling,
    bos: &Bos,
    o: &EngineOpts,
    json: bool,
) -> Result<()> {
    // --messages JSON: the conversation rendered by the chat template, exactly as the server's `messages` input.
    let loading = std::time::Instant::now(); // load_s: the engine's load (and the prompt's tokenization)
    let (mut engine, spec) = match (&input.prompt, &input.messages) {
        (Some(prompt), None) => (engine_for(ckpt, o)?, prompt_spec(s, bos.choice(), prompt.clone(), false)),
        (None, Some(m)) => (chat_engine(ckpt, o, chat_template)?, prompt_spec(s, None, m.clone(), true)),
        _ => return Err(Error::InvalidRequest("give --prompt TEXT or --messages JSON".into())),
    };
    let prepared = engine.prepare(1, 0, &spec, &prompt_defaults(s))?;
    let ids = prepared.request.prompt_ids.clone();
    let load_s = loading.elapsed().as_secs_f64();
    let g = run_one(&mut engine, prepared, json)?;
    if json {
        let t = g.timings.unwrap_or_default();
        let timings = json!({
            "load_s": load_s, "prompt_tokens": t.prompt_tokens, "prefill_ms": t.prefill_ms,
            "decode_tokens": t.decode_tokens, "decode_ms": t.decode_ms, "decode_ms_per_token": t.decode_ms_per_token(),
        });
        let (out, text, logprobs, reason) = (g.ids, g.text, g.logprobs, g.reason);
        let mut doc = json!({
            "prompt_ids": ids, "ids": out, "text": text, "logprobs": logprobs, "finish_reason": reason,
            "timings": timings,
        });
        if s.top_logprobs > 0 {
            doc["top_logprobs"] = json!(g.top);
        }
        if s.prompt_logprobs {
            let lp: Vec<_> = g.prompt.iter().map(|p| (!p.logprob.is_nan()).then_some(p.logprob)).collect();
            doc["prompt_logprobs"] = json!(lp);
            doc["prompt_top_logprobs"] = json!(g.prompt.iter().map(|p| &p.top).collect::<Vec<_>>());
        }
        print_json(doc);
    } else {
        println!();
    }
    Ok(())
}

/// The checkpoint's engine with `--chat-template` applied.
fn chat_engine(ckpt: &Path, o: &EngineOpts, chat_template: Option<&str>) -> Result<Engine> {
    let mut engine = engine_for(ckpt, o)?;
    engine.apply_chat_override(chat_template)?;
    if engine.chat_template().is_none() {
        let m = "this checkpoint has no chat template; pass --chat-template FILE (or `nemo`)";
        return Err(Error::InvalidRequest(m.into()));
    }
    Ok(engine)
}

fn render_chat(ckpt: &Path, messages: &str, chat_template: Option<&str>, json_out: bool) -> Result<()> {
    let msgs = triton_llama::chat::parse_messages(messages)?;
    // Only the tokenizer and template are needed, but the loader validates the checkpoint the same way.
    let src = loader::open(ckpt)?;
    let tok = src.tokenizer()?;
    let piece = |id| tok.id_to_piece(id).unwrap_or_default();
    let t = match chat_template {
        Some(spec) => {
            triton_llama::chat::ChatTemplate::from_override(spec, &piece(tok.bos_id()), &piece(tok.eos_id()))?
        }
        None => src.chat_template()?.ok_or_else(|| {
            Error::InvalidRequest("this checkpoint has no chat template; pass --chat-template".into())
        })?,
    };
    let text = t.render(&msgs, true)?;
    if json_out {
        let ids = t.encode(&tok, &text)?;
        print_json(json!({"prompt": text, "ids": ids, "stop_strings": t.stop_strings(), "template": t.kind()}));
    } else {
        print!("{text}");
    }
    Ok(())
}

/// Interactive chat: each stdin line is a user turn; the answer streams to stdout and joins the history.
fn chat(
    ckpt: &Path,
    system: Option<&str>,
    chat_template: Option<&str>,
    s: &Sampling,
    o: &EngineOpts,
    json: bool,
) -> Result<()> {
    let mut engine = chat_engine(ckpt, o, chat_template)?;
    let mut history = Vec::new();
    if let Some(sys) = system {
        history.push(triton_llama::chat::Message::new("system", sys));
    }
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut line = String::new();
    for turn in 1u64.. {
        if tty {
            eprint!("> ");
        }
        line.clear();
        if std::io::stdin().read_line(&mut line).map_err(|e| Error::Internal(format!("stdin: {e}")))? == 0 {
            break;
        }
        let user = line.trim_end_matches(['\n', '\r']);
        if user.is_empty() {
            continue;
        }
        history.push(triton_llama::chat::Message::new("user", user));
        let messages = serde_json::to_string(&history).map_err(|e| Error::Internal(e.to_string()))?;
        let prepared = engine.prepare(turn, 0, &prompt_spec(s, None, messages, true), &prompt_defaults(s))?;
        let (prompt, ids) = (prepared.text.clone(), prepared.request.prompt_ids.clone());
        let g = run_one(&mut engine, prepared, json)?;
        if json {
            let (out, text, reason) = (&g.ids, &g.text, g.reason);
            print_json(json!({"prompt": prompt, "prompt_ids": ids, "ids": out, "text": text, "finish_reason": reason}));
        } else {
            println!();
        }
        history.push(triton_llama::chat::Message::new("assistant", &g.text));
    }
    Ok(())
}

/// `bench-guided`: the engine with room for the batch and no prefix cache (each first token is a full prefill).
fn bench_guided(ckpt: &Path, batch: usize, steps: usize, rounds: usize, o: &EngineOpts, json_out: bool) -> Result<()> {
    let ecfg = EngineConfig { max_num_seqs: batch, enable_prefix_caching: false, ..engine_config(o)? };
    let mut e = Engine::new(loader::open(ckpt)?, ecfg)?;
    let r = triton_llama::bench::guided::run(&mut e, batch, steps, rounds)?;
    if json_out {
        print_json(serde_json::to_value(&r).map_err(|e| Error::Internal(e.to_string()))?);
        return Ok(());
    }
    println!("structured output at batch {} (vocabulary {}):", r.batch, r.vocab);
    println!(
        "  decode step: {:.1} ms unconstrained ({} steps), {:.1} ms with a JSON schema on every row ({} steps): \
         overhead {:+.1}%",
        r.plain_ms_per_step,
        r.plain_steps,
        r.guided_ms_per_step,
        r.guided_steps,
        r.overhead * 100.0
    );
    println!(
        "  constraints: {:.2} ms of host time per step (masks during the forward pass, then advancing)",
        r.mask_ms_per_step
    );
    println!(
        "  time to first token: {:.1} ms unconstrained, {:.1} ms guided (compiling the schema: {:.1} ms)",
        r.ttft_plain_ms, r.ttft_guided_ms, r.compile_ms
    );
    Ok(())
}

fn score(
    ckpt: &Path,
    prompt: Option<&str>,
    ids: Option<Vec<u32>>,
    logits_out: Option<&Path>,
    bos: &Bos,
    o: &EngineOpts,
    json_out: bool,
) -> Result<()> {
    let mut engine = engine_for(ckpt, o)?;
    let ids = match (ids, prompt) {
        (Some(ids), _) => ids,
        (None, Some(p)) => engine.tokenizer().encode(p, bos.choice().unwrap_or(engine.default_add_bos()))?,
        (None, None) => return Err(Error::InvalidRequest("give --prompt TEXT or --ids 1,2,...".into())),
    };
    let lp = match logits_out {
        None => engine.score(&ids)?,
        Some(path) => {
            // Raw little-endian f32 logits, [ids.len(), vocab] row-major, for drift comparisons.
            let logits = engine.prompt_logits(&ids)?;
            let bytes: Vec<u8> = logits.iter().flat_map(|x| x.to_le_bytes()).collect();
            std::fs::write(path, bytes).map_err(|e| Error::io(path, e))?;
            let v = engine.cfg.vocab_size;
            let lp = |i: usize| triton_llama::sampling::logprob_of(&logits[(i - 1) * v..i * v], ids[i] as usize);
            (1..ids.len()).map(lp).collect()
        }
    };
    if json_out {
        print_json(json!({"ids": ids, "logprobs": lp}));
    } else {
        for (i, l) in ids.iter().skip(1).zip(&lp) {
            println!("{i}\t{l:.6}");
        }
        println!("total\t{:.6}", lp.iter().sum::<f32>());
    }
    Ok(())
}

fn bench(
    checkpoint: Option<&Path>,
    fmt: triton_llama::backend::WeightFormat,
    batches: &[usize],
    steps: usize,
    prefills: &[usize],
    json_out: bool,
) -> Result<()> {
    let r = match checkpoint {
        None => triton_llama::bench::run_with(batches, steps, prefills, fmt)?,
        Some(p) => {
            let opened = std::time::Instant::now();
            let src = loader::open(p)?;
            triton_llama::bench::run_on(std::sync::Arc::from(src), opened, fmt, batches, steps, prefills)?
        }
    };
    if json_out {
        print_json(serde_json::to_value(&r).map_err(|e| Error::Internal(e.to_string()))?);
        return Ok(());
    }
    println!(
        "model: {}: {} params, {:.1} MB weights ({}), loaded in {:.1} s, {} threads",
        r.model,
        r.model_params,
        r.weight_bytes as f64 / 1e6,
        r.weights,
        r.load_s,
        r.threads
    );
    println!("cpu: {}; matmul kernels: {}", r.cpu, r.cpu_kernels);
    if let Some(mb) = r.huge_page_mb {
        println!("on transparent huge pages: {mb:.0} MB (TL_HUGEPAGES=0 turns them off)");
    }
    triton_llama::bench::print_bandwidth(&r.copies, &r.decode);
    println!(
        "read (all threads, 1 GiB): {:.2} GB/s: batch-1 decode can reach at most {:.1} tok/s on this machine now",
        r.read_gbps, r.batch1_ceiling_tok_s
    );
    for p in &r.prefill {
        println!("prefill {:>5} tokens: {:9.1} ms {:9.1} tok/s", p.tokens, p.ms, p.tok_s);
    }
    Ok(())
}

/// `bench-cuda`'s model: shape name, layers (None: the shape's), weight format.
type CudaModel<'a> = (&'a str, Option<usize>, triton_llama::backend::Precision);

#[cfg(not(feature = "cuda"))]
fn bench_cuda(_: usize, _: usize, _: (&[usize], &[usize]), _: &[usize], _: CudaModel, _: bool) -> Result<()> {
    Err(Error::Unavailable(
        "this binary was built without the `cuda` feature (cargo build --release --features cuda)".into(),
    ))
}

#[cfg(feature = "cuda")]
fn bench_cuda(
    gpu: usize,
    steps: usize,
    (batches, contexts): (&[usize], &[usize]),
    prefill: &[usize],
    (shape, layers, weights): CudaModel,
    json_out: bool,
) -> Result<()> {
    use triton_llama::bench::cuda::{llama2_7b, llama2_70b, llama2_70b_tp2_rank};
    let mut cfg = match shape {
        "70b" => llama2_70b(),
        "70b-tp2-rank" => llama2_70b_tp2_rank(),
        _ => llama2_7b(),
    };
    cfg.num_layers = layers.unwrap_or(cfg.num_layers);
    let r = triton_llama::bench::cuda::run(gpu, cfg, weights, batches, contexts, steps, prefill)?;
    if json_out {
        print_json(serde_json::to_value(&r).map_err(|e| Error::Internal(e.to_string()))?);
        return Ok(());
    }
    println!(
        "device: {}  model: {} layers, {} params, {:.2} GB {}, loaded in {:.1} s, {} KV blocks",
        r.device,
        r.num_layers,
        r.model_params,
        r.weight_bytes as f64 / 1e9,
        r.weights,
        r.load_s,
        r.kv_blocks
    );
    triton_llama::bench::print_bandwidth(&r.copies, &r.decode);
    for p in &r.decode_at_context {
        match (p.ms_per_step, p.tok_s, p.fraction_of_copy) {
            (Some(ms), Some(tok_s), Some(f)) => println!(
                "decode batch {:>2} at context {:>5}: {ms:8.2} ms/step {tok_s:9.1} tok/s  {:.3} of copy (weights + KV)",
                p.batch, p.context, f
            ),
            _ => println!(
                "decode batch {:>2} at context {:>5}: skipped ({})",
                p.batch,
                p.context,
                p.skipped.as_deref().unwrap_or("")
            ),
        }
    }
    println!("GEMM 4096 x 8192 x 8192 ({}): {:.1} TFLOP/s", r.weights, r.gemm_tflops);
    let a = &r.attention;
    println!(
        "causal prefill attention, {} tokens, {} heads of {}: tensor cores {:.1} TFLOP/s, f32 {:.1} TFLOP/s",
        a.tokens, a.heads, a.head_dim, a.tensor_core_tflops, a.f32_tflops
    );
    for p in &r.prefill {
        println!(
            "prefill {:>5} tokens: {:9.1} ms {:9.1} tok/s {:7.1} TFLOP/s ({:.3} of the GEMM)",
            p.tokens, p.ms, p.tok_s, p.tflops, p.gemm_ratio
        );
    }
    Ok(())
}

fn list_str(v: &str, k: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|x| x.trim().parse().map_err(|_| Error::InvalidRequest(format!("--{k}: cannot parse `{v}`"))))
        .collect()
}
