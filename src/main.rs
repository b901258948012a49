//! `triton-llama`: inspect, tokenize, generate with, score and benchmark Llama-2 checkpoints on the CPU or CUDA engine.
use serde_json::json;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use triton_llama::backend::WeightFormat;
use triton_llama::engine::serve::{Prepared, PromptDefaults, PromptSpec};
use triton_llama::engine::{Device, Engine, EngineConfig, Timings};
use triton_llama::sampling::SamplingParams;
use triton_llama::{Error, Result, loader};

const USAGE: &str = "usage:
  triton-llama inspect CKPT [--json]
  triton-llama tokenize CKPT --text TEXT [--bos|--no-bos] [--json]
  triton-llama generate CKPT (--prompt TEXT | --messages JSON [--chat-template FILE|nemo])
                         [--max-tokens N] [--min-tokens N] [--temperature T] [--top-k K]
                         [--top-p P] [--seed S] [--repetition-penalty R] [--presence-penalty P]
                         [--frequency-penalty F] [--stop TEXT]... [--no-default-stops] [--ban TEXT]...
                         [--no-repeat-ngram-size N] [--ignore-eos] [--bos|--no-bos] [--tp N]
                         [--device cpu|cuda:0,1,...] [--weights W] [--json]
  triton-llama chat CKPT [--system TEXT] [--chat-template FILE|nemo] [generate's sampling options] [--json]
                         (one user turn per stdin line; answers stream to stdout; the history is kept)
  triton-llama render-chat CKPT --messages JSON [--chat-template FILE|nemo] [--json]   (the prompt a chat gets)
  triton-llama score CKPT (--prompt TEXT [--bos|--no-bos] | --ids 1,2,...) [--logits-out FILE] [--tp N]
                         [--device cpu|cuda:0,1,...] [--weights W] [--json]  (FILE: raw f32 logits [tokens, vocab])
  triton-llama bench [--checkpoint CKPT] [--weights W] [--batches 1,8] [--steps N] [--prefill 256,...] [--json]
                         (without --checkpoint: a random 44M-parameter bf16 model)
  triton-llama demo-model DIR        (a small random-weight model + trained tokenizer, Hugging Face layout)
  triton-llama bench-cuda [--gpu N] [--steps N] [--batches 1,16,64] [--prefill 512,2048] [--layers N] [--json]
                         (needs a build with --features cuda; random Llama-2-7B-shape weights)
CKPT is a .nemo file, an extracted .nemo folder, or a Hugging Face folder (config.json + safetensors).
W (matmul weights): auto (default: bf16 for a bf16 checkpoint, else f32), f32 (exact: the checkpoint's dtype,
  f32 activations; also as-loaded), bf16 (bf16 dot products, AVX512_BF16 on the CPU) or int8 (quantized at load,
  blocks of 32; CPU only).";

/// Parsed command line: positional arguments, repeated `--key value` options and bare flags.
struct Args {
    pos: Vec<String>,
    opts: Vec<(String, String)>,
    flags: Vec<String>,
}

const FLAGS: [&str; 6] = ["json", "bos", "no-bos", "ignore-eos", "no-default-stops", "help"];

impl Args {
    fn parse(raw: Vec<String>) -> Result<Args> {
        let mut a = Args { pos: Vec::new(), opts: Vec::new(), flags: Vec::new() };
        let mut it = raw.into_iter();
        while let Some(s) = it.next() {
            if let Some(k) = s.strip_prefix("--") {
                if FLAGS.contains(&k) {
                    a.flags.push(k.into());
                } else {
                    let v = it.next().ok_or_else(|| Error::InvalidRequest(format!("--{k} needs a value")))?;
                    a.opts.push((k.into(), v));
                }
            } else {
                a.pos.push(s);
            }
        }
        Ok(a)
    }
    fn flag(&self, k: &str) -> bool {
        self.flags.iter().any(|f| f == k)
    }
    fn get(&self, k: &str) -> Option<&str> {
        self.opts.iter().rev().find(|(o, _)| o == k).map(|(_, v)| v.as_str())
    }
    fn all(&self, k: &str) -> Vec<String> {
        self.opts.iter().filter(|(o, _)| o == k).map(|(_, v)| v.clone()).collect()
    }
    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T> {
        match self.get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| Error::InvalidRequest(format!("--{k}: cannot parse `{v}`"))),
        }
    }
    fn need(&self, k: &str) -> Result<&str> {
        self.get(k).ok_or_else(|| Error::InvalidRequest(format!("--{k} is required")))
    }
    fn ckpt(&self) -> Result<PathBuf> {
        self.pos.get(1).map(PathBuf::from).ok_or_else(|| Error::InvalidRequest("missing checkpoint path".into()))
    }
    /// Explicit --bos/--no-bos, else the checkpoint's default.
    fn bos(&self, default: bool) -> bool {
        self.bos_choice().unwrap_or(default)
    }
    /// `--bos` / `--no-bos`, if given.
    fn bos_choice(&self) -> Option<bool> {
        if self.flag("bos") {
            Some(true)
        } else if self.flag("no-bos") {
            Some(false)
        } else {
            None
        }
    }
    fn allow_only(&self, opts: &[&str]) -> Result<()> {
        for (k, _) in &self.opts {
            if !opts.contains(&k.as_str()) {
                return Err(Error::InvalidRequest(format!("unknown option --{k} for `{}`", self.pos[0])));
            }
        }
        Ok(())
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let args = match Args::parse(std::env::args().skip(1).collect()) {
        Ok(a) => a,
        Err(e) => return fail(e),
    };
    if args.pos.is_empty() || args.flag("help") {
        eprintln!("{USAGE}");
        return if args.flag("help") { ExitCode::SUCCESS } else { ExitCode::from(2) };
    }
    let r = match args.pos[0].as_str() {
        "inspect" => inspect(&args),
        "tokenize" => tokenize(&args),
        "generate" => generate(&args),
        "score" => score(&args),
        "chat" => chat(&args),
        "render-chat" => render_chat(&args),
        "bench" => bench(&args),
        "demo-model" => args
            .pos
            .get(1)
            .ok_or_else(|| Error::InvalidRequest("demo-model needs a directory".into()))
            .and_then(|d| triton_llama::demo::write(std::path::Path::new(d))),
        "bench-cuda" => bench_cuda(&args),
        other => Err(Error::InvalidRequest(format!("unknown command `{other}`\n{USAGE}"))),
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

fn inspect(a: &Args) -> Result<()> {
    a.allow_only(&[])?;
    let src = loader::open(&a.ckpt()?)?;
    let c = src.config();
    let tensors = src.tensors();
    let total: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>() * t.dtype.size()).sum();
    if a.flag("json") {
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

fn tokenize(a: &Args) -> Result<()> {
    a.allow_only(&["text"])?;
    let src = loader::open(&a.ckpt()?)?;
    let tok = src.tokenizer()?;
    let text = a.need("text")?;
    let ids = tok.encode(text, a.bos(src.default_add_bos()))?;
    if a.flag("json") {
        print_json(json!({"ids": ids, "text": text}));
    } else {
        println!("{}", ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(" "));
    }
    Ok(())
}

fn engine_for(a: &Args) -> Result<Engine> {
    let src = loader::open(&a.ckpt()?)?;
    let (device, tp) = match a.get("device").unwrap_or("cpu") {
        "cpu" => (Device::Cpu, a.num("tp", 1)?),
        dev => {
            let spec = dev
                .strip_prefix("cuda")
                .map(|r| r.trim_start_matches(':'))
                .ok_or_else(|| Error::InvalidRequest(format!("--device: `{dev}` is not cpu or cuda[:ids]")))?;
            let gpu_ids = if spec.is_empty() { (0..a.num("tp", 1)?).collect() } else { list_str(spec, "device")? };
            (Device::Cuda { kv_fraction: 0.9, gpu_ids: gpu_ids.clone() }, gpu_ids.len())
        }
    };
    let weights = WeightFormat::parse(a.get("weights").unwrap_or("auto"))?;
    Engine::new(src, EngineConfig { device, tp, max_num_seqs: 1, weights, ..Default::default() })
}

/// Sampling options shared by `generate` and `chat`.
const SAMPLING_OPTS: [&str; 13] = [
    "max-tokens",
    "min-tokens",
    "temperature",
    "top-k",
    "top-p",
    "seed",
    "repetition-penalty",
    "presence-penalty",
    "frequency-penalty",
    "stop",
    "ban",
    "tp",
    "no-repeat-ngram-size",
];

/// One prompt from the command line, as a frontend hands it to `Engine::prepare` (which adds the default and
/// chat-template stop strings and tokenizes the banned words, as for the server's requests). `chat`: `text` is
/// a JSON list of messages.
fn prompt_spec(a: &Args, text: String, chat: bool) -> Result<PromptSpec> {
    let add_bos = if chat { None } else { a.bos_choice() };
    Ok(PromptSpec { text, params: sampling(a)?, bad_words: a.all("ban"), add_bos, chat })
}

/// `--no-default-stops` drops the checkpoint's stop strings.
fn prompt_defaults(a: &Args) -> PromptDefaults {
    PromptDefaults { stop_strings: a.flag("no-default-stops").then(Vec::new), ..Default::default() }
}

/// The request's sampling parameters from the command line.
fn sampling(a: &Args) -> Result<SamplingParams> {
    Ok(SamplingParams {
        temperature: a.num("temperature", 0.0)?,
        top_k: a.num("top-k", 0)?,
        top_p: a.num("top-p", 1.0)?,
        seed: a
            .get("seed")
            .map(|s| s.parse().map_err(|_| Error::InvalidRequest(format!("--seed: cannot parse `{s}`"))))
            .transpose()?,
        repetition_penalty: a.num("repetition-penalty", 1.0)?,
        presence_penalty: a.num("presence-penalty", 0.0)?,
        frequency_penalty: a.num("frequency-penalty", 0.0)?,
        min_new_tokens: a.num("min-tokens", 0)?,
        max_new_tokens: a.num("max-tokens", 64)?,
        ignore_eos: a.flag("ignore-eos"),
        banned: Vec::new(),
        no_repeat_ngram_size: a.num("no-repeat-ngram-size", 0)?,
        stop_strings: a.all("stop"),
        stop_token_ids: Vec::new(),
    })
}

/// What one generation produced.
struct Generated {
    ids: Vec<u32>,
    text: String,
    logprobs: Vec<f32>,
    reason: &'static str,
    timings: Option<Timings>,
}

/// Runs one request to the end, streaming its text to stdout unless `quiet`.
fn run_one(engine: &mut Engine, p: Prepared, quiet: bool) -> Result<Generated> {
    engine.add_request(p.request)?;
    let mut g = Generated { ids: Vec::new(), text: String::new(), logprobs: Vec::new(), reason: "", timings: None };
    let mut stdout = std::io::stdout();
    engine.run_to_completion(|o| {
        if let Some(t) = o.token {
            g.ids.push(t);
            g.logprobs.push(o.logprob);
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
    Ok(g)
}

fn generate(a: &Args) -> Result<()> {
    let mut allowed = SAMPLING_OPTS.to_vec();
    allowed.extend(["prompt", "messages", "chat-template", "device", "weights"]);
    a.allow_only(&allowed)?;
    // --messages JSON: the conversation rendered by the chat template, exactly as the server's `messages` input.
    let loading = std::time::Instant::now(); // load_s: the engine's load (and the prompt's tokenization)
    let (mut engine, spec) = match (a.get("prompt"), a.get("messages")) {
        (Some(prompt), None) => (engine_for(a)?, prompt_spec(a, prompt.into(), false)?),
        (None, Some(m)) => (chat_engine(a)?, prompt_spec(a, m.into(), true)?),
        _ => return Err(Error::InvalidRequest("give --prompt TEXT or --messages JSON".into())),
    };
    let prepared = engine.prepare(1, 0, &spec, &prompt_defaults(a))?;
    let ids = prepared.request.prompt_ids.clone();
    let load_s = loading.elapsed().as_secs_f64();
    let json = a.flag("json");
    let g = run_one(&mut engine, prepared, json)?;
    if json {
        let t = g.timings.unwrap_or_default();
        let timings = json!({
            "load_s": load_s, "prompt_tokens": t.prompt_tokens, "prefill_ms": t.prefill_ms,
            "decode_tokens": t.decode_tokens, "decode_ms": t.decode_ms, "decode_ms_per_token": t.decode_ms_per_token(),
        });
        let (out, text, logprobs, reason) = (g.ids, g.text, g.logprobs, g.reason);
        print_json(json!({
            "prompt_ids": ids, "ids": out, "text": text, "logprobs": logprobs, "finish_reason": reason,
            "timings": timings,
        }));
    } else {
        println!();
    }
    Ok(())
}

/// The checkpoint's engine with `--chat-template` applied.
fn chat_engine(a: &Args) -> Result<Engine> {
    let mut engine = engine_for(a)?;
    engine.apply_chat_override(a.get("chat-template"))?;
    if engine.chat_template().is_none() {
        let m = "this checkpoint has no chat template; pass --chat-template FILE (or `nemo`)";
        return Err(Error::InvalidRequest(m.into()));
    }
    Ok(engine)
}

fn render_chat(a: &Args) -> Result<()> {
    a.allow_only(&["messages", "chat-template", "device", "tp"])?;
    let msgs = triton_llama::chat::parse_messages(a.need("messages")?)?;
    // Only the tokenizer and template are needed, but the loader validates the checkpoint the same way.
    let src = loader::open(&a.ckpt()?)?;
    let tok = src.tokenizer()?;
    let piece = |id| tok.id_to_piece(id).unwrap_or_default();
    let t = match a.get("chat-template") {
        Some(spec) => {
            triton_llama::chat::ChatTemplate::from_override(spec, &piece(tok.bos_id()), &piece(tok.eos_id()))?
        }
        None => src.chat_template()?.ok_or_else(|| {
            Error::InvalidRequest("this checkpoint has no chat template; pass --chat-template".into())
        })?,
    };
    let text = t.render(&msgs, true)?;
    if a.flag("json") {
        let ids = t.encode(&tok, &text)?;
        print_json(json!({"prompt": text, "ids": ids, "stop_strings": t.stop_strings(), "template": t.kind()}));
    } else {
        print!("{text}");
    }
    Ok(())
}

/// Interactive chat: each stdin line is a user turn; the answer streams to stdout and joins the history.
fn chat(a: &Args) -> Result<()> {
    let mut allowed = SAMPLING_OPTS.to_vec();
    allowed.extend(["system", "chat-template", "device", "weights"]);
    a.allow_only(&allowed)?;
    let mut engine = chat_engine(a)?;
    let json = a.flag("json");
    let mut history = Vec::new();
    if let Some(s) = a.get("system") {
        history.push(triton_llama::chat::Message::new("system", s));
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
        let prepared = engine.prepare(turn, 0, &prompt_spec(a, messages, true)?, &prompt_defaults(a))?;
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

fn score(a: &Args) -> Result<()> {
    a.allow_only(&["prompt", "ids", "logits-out", "tp", "device", "weights"])?;
    let mut engine = engine_for(a)?;
    let ids = match a.get("ids") {
        Some(v) => v
            .split(',')
            .map(|x| x.trim().parse().map_err(|_| Error::InvalidRequest(format!("--ids: cannot parse `{x}`"))))
            .collect::<Result<Vec<u32>>>()?,
        None => engine.tokenizer().encode(a.need("prompt")?, a.bos(engine.default_add_bos()))?,
    };
    let lp = match a.get("logits-out") {
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
    if a.flag("json") {
        print_json(json!({"ids": ids, "logprobs": lp}));
    } else {
        for (i, l) in ids.iter().skip(1).zip(&lp) {
            println!("{i}\t{l:.6}");
        }
        println!("total\t{:.6}", lp.iter().sum::<f32>());
    }
    Ok(())
}

fn bench(a: &Args) -> Result<()> {
    a.allow_only(&["checkpoint", "batches", "steps", "prefill", "weights"])?;
    let fmt = WeightFormat::parse(a.get("weights").unwrap_or("auto"))?;
    let (batches, prefills) = (list_or(a, "batches", &[1, 8])?, list_or(a, "prefill", &[256])?);
    let steps = a.num("steps", 32)?;
    let r = match a.get("checkpoint") {
        None => triton_llama::bench::run_with(&batches, steps, &prefills, fmt)?,
        Some(p) => {
            let opened = std::time::Instant::now();
            let src = loader::open(std::path::Path::new(p))?;
            triton_llama::bench::run_on(std::sync::Arc::from(src), opened, fmt, &batches, steps, &prefills)?
        }
    };
    if a.flag("json") {
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

/// A comma-separated list of numbers, or `default` when the option is absent.
fn list_or(a: &Args, k: &str, default: &[usize]) -> Result<Vec<usize>> {
    match a.get(k) {
        None => Ok(default.to_vec()),
        Some(v) => list_str(v, k),
    }
}

#[cfg(not(feature = "cuda"))]
fn bench_cuda(_: &Args) -> Result<()> {
    Err(Error::Unavailable(
        "this binary was built without the `cuda` feature (cargo build --release --features cuda)".into(),
    ))
}

#[cfg(feature = "cuda")]
fn bench_cuda(a: &Args) -> Result<()> {
    a.allow_only(&["gpu", "steps", "batches", "prefill", "layers"])?;
    let mut cfg = triton_llama::bench::cuda::llama2_7b();
    cfg.num_layers = a.num("layers", cfg.num_layers)?;
    let (batches, prefill) = (list_or(a, "batches", &[1, 16, 64])?, list_or(a, "prefill", &[512, 2048])?);
    let r = triton_llama::bench::cuda::run(a.num("gpu", 0)?, cfg, &batches, a.num("steps", 32)?, &prefill)?;
    if a.flag("json") {
        print_json(serde_json::to_value(&r).map_err(|e| Error::Internal(e.to_string()))?);
        return Ok(());
    }
    println!(
        "device: {}  model: {} params, {:.2} GB bf16, loaded in {:.1} s, {} KV blocks",
        r.device,
        r.model_params,
        r.weight_bytes as f64 / 1e9,
        r.load_s,
        r.kv_blocks
    );
    triton_llama::bench::print_bandwidth(&r.copies, &r.decode);
    for p in &r.prefill {
        println!("prefill {:>5} tokens: {:9.1} ms {:9.1} tok/s", p.tokens, p.ms, p.tok_s);
    }
    Ok(())
}

fn list_str(v: &str, k: &str) -> Result<Vec<usize>> {
    v.split(',')
        .map(|x| x.trim().parse().map_err(|_| Error::InvalidRequest(format!("--{k}: cannot parse `{v}`"))))
        .collect()
}
