//! The `triton-llama` command line, declared with clap's derive: one struct per subcommand, each with its own
//! `--help`; the options, their defaults and their spellings are those of the hand parser this replaced.
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use triton_llama::backend::{KvDtype, WeightFormat};
use triton_llama::guided::Guide;
use triton_llama::sampling::SamplingParams;

const AFTER_HELP: &str = "CKPT is a .nemo file, an extracted .nemo folder, or a Hugging Face folder (config.json + \
                          safetensors). Each command has its own --help.";

#[derive(Parser, Debug)]
#[command(name = "triton-llama", version, after_help = AFTER_HELP)]
#[command(
    about = "Inspect, tokenize, generate with, score and benchmark Llama-2 checkpoints on the CPU or CUDA engine"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Format, config, training tensor-parallel size, layouts and every tensor of a checkpoint
    Inspect {
        /// The checkpoint: a .nemo file, an extracted .nemo folder, or a Hugging Face folder
        ckpt: PathBuf,
        #[command(flatten)]
        out: Out,
    },
    /// Token ids of a text
    Tokenize {
        /// The checkpoint: a .nemo file, an extracted .nemo folder, or a Hugging Face folder
        ckpt: PathBuf,
        #[arg(long, allow_hyphen_values = true)]
        text: String,
        #[command(flatten)]
        bos: Bos,
        #[command(flatten)]
        out: Out,
    },
    /// Generate from a prompt (or a chat conversation), streaming the text
    Generate {
        /// The checkpoint: a .nemo file, an extracted .nemo folder, or a Hugging Face folder
        ckpt: PathBuf,
        #[command(flatten)]
        input: PromptOrMessages,
        /// A Jinja / tokenizer_config.json chat template file, or `nemo` (with --messages)
        #[arg(long)]
        chat_template: Option<String>,
        #[command(flatten)]
        sampling: Sampling,
        #[command(flatten)]
        bos: Bos,
        #[command(flatten)]
        engine: EngineOpts,
        #[command(flatten)]
        out: Out,
    },
    /// Interactive chat: one user turn per stdin line; answers stream to stdout and the history is kept
    Chat {
        /// The checkpoint: a .nemo file, an extracted .nemo folder, or a Hugging Face folder
        ckpt: PathBuf,
        /// A system message that opens the conversation
        #[arg(long, allow_hyphen_values = true)]
        system: Option<String>,
        /// A Jinja / tokenizer_config.json chat template file, or `nemo`
        #[arg(long)]
        chat_template: Option<String>,
        #[command(flatten)]
        sampling: Sampling,
        #[command(flatten)]
        engine: EngineOpts,
        #[command(flatten)]
        out: Out,
    },
    /// The prompt a chat conversation gets (the chat template's rendering)
    RenderChat {
        /// The checkpoint: a .nemo file, an extracted .nemo folder, or a Hugging Face folder
        ckpt: PathBuf,
        /// The conversation: a JSON list of {"role", "content"} messages
        #[arg(long, allow_hyphen_values = true)]
        messages: String,
        /// A Jinja / tokenizer_config.json chat template file, or `nemo`
        #[arg(long)]
        chat_template: Option<String>,
        /// Accepted for symmetry with `generate` (rendering needs no device)
        #[arg(long, default_value = "cpu", hide = true)]
        device: String,
        #[arg(long, default_value_t = 1, hide = true)]
        tp: usize,
        #[command(flatten)]
        out: Out,
    },
    /// Log-probability of every prompt token after the first
    Score {
        /// The checkpoint: a .nemo file, an extracted .nemo folder, or a Hugging Face folder
        ckpt: PathBuf,
        /// The text to score (tokenized with the checkpoint's BOS choice unless --bos / --no-bos)
        #[arg(long, allow_hyphen_values = true, required_unless_present = "ids", conflicts_with = "ids")]
        prompt: Option<String>,
        /// Token ids to score instead of a text: 1,2,...
        #[arg(long, value_delimiter = ',')]
        ids: Option<Vec<u32>>,
        /// Also write the raw f32 logits, [tokens, vocab] row-major little-endian, to this file
        #[arg(long)]
        logits_out: Option<PathBuf>,
        #[command(flatten)]
        bos: Bos,
        #[command(flatten)]
        engine: EngineOpts,
        #[command(flatten)]
        out: Out,
    },
    /// Decode and prefill speed on the CPU, as ratios to this machine's measured memory bandwidth
    Bench {
        /// A checkpoint to time (default: a random 44M-parameter bf16 model)
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        #[arg(long, default_value = "auto", value_parser = parse_weights, help = WEIGHTS_HELP)]
        weights: WeightFormat,
        /// Decode batch sizes
        #[arg(long, value_delimiter = ',', default_value = "1,8")]
        batches: Vec<usize>,
        /// Timed decode steps per batch size
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// Prompt lengths timed as one prefill each
        #[arg(long, value_delimiter = ',', default_value = "256")]
        prefill: Vec<usize>,
        #[command(flatten)]
        out: Out,
    },
    /// What structured output costs: a batch's decode step with every row following a JSON schema against the
    /// same batch unconstrained, and the time to first token a schema's compilation adds
    BenchGuided {
        ckpt: PathBuf,
        /// Rows decoding together
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Timed decode steps each way
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// Single requests each way for the time to first token
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        #[command(flatten)]
        engine: EngineOpts,
        #[command(flatten)]
        out: Out,
    },
    /// Write a small random-weight model and a trained tokenizer (Hugging Face layout) to DIR
    DemoModel { dir: PathBuf },
    /// Decode and prefill speed on one GPU (needs a build with --features cuda; random Llama-2-7B-shape weights)
    BenchCuda {
        /// The GPU's index
        #[arg(long, default_value_t = 0)]
        gpu: usize,
        /// Timed decode steps per batch size
        #[arg(long, default_value_t = 32)]
        steps: usize,
        /// Decode batch sizes
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        batches: Vec<usize>,
        /// Prompt lengths timed as one prefill each
        #[arg(long, value_delimiter = ',', default_value = "512,2048")]
        prefill: Vec<usize>,
        /// Layers of the model (default: the shape's: 32 for 7b, 80 for 70b)
        #[arg(long)]
        layers: Option<usize>,
        /// Model shape: 7b (Llama-2-7B), 70b (NV-Llama2-70B: hidden 8192, 64/8 heads, FFN 28672) or 70b-tp2-rank
        /// (one rank of it at TP=2: 32/4 heads, FFN 14336)
        #[arg(long, default_value = "7b", value_parser = ["7b", "70b", "70b-tp2-rank"])]
        shape: String,
        /// Contexts at which each batch size also decodes (the cached K/V read, not computed); none by default
        #[arg(long, value_delimiter = ',')]
        contexts: Vec<usize>,
        /// Matmul weights: bf16, or fp8 (E4M3 per output channel, quantized on the GPU at load; compute capability
        /// 8.9+)
        #[arg(long, default_value = "bf16", value_parser = parse_weights)]
        weights: WeightFormat,
        /// KV cache: auto (bf16), f32, bf16 or fp8
        #[arg(long, default_value = "auto", value_parser = |s: &str| KvDtype::parse(s).map_err(|e| e.to_string()))]
        kv_cache_dtype: KvDtype,
        #[command(flatten)]
        out: Out,
    },
}

/// `--json`: one JSON object on stdout instead of text.
#[derive(Args, Debug)]
pub struct Out {
    /// Print one JSON object instead of text
    #[arg(long)]
    pub json: bool,
}

/// `--prompt TEXT` or `--messages JSON`, exactly one.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct PromptOrMessages {
    /// The prompt text
    #[arg(long, allow_hyphen_values = true)]
    pub prompt: Option<String>,
    /// A chat conversation (JSON list of {"role", "content"}), rendered by the chat template as the server's
    /// `messages` input is
    #[arg(long, allow_hyphen_values = true)]
    pub messages: Option<String>,
}

/// `--bos` / `--no-bos`: whether the prompt gets the BOS token (default: the checkpoint's choice).
#[derive(Args, Debug)]
pub struct Bos {
    /// Add the BOS token (default: the checkpoint's choice)
    #[arg(long, conflicts_with = "no_bos")]
    pub bos: bool,
    /// Do not add the BOS token
    #[arg(long)]
    pub no_bos: bool,
}

impl Bos {
    pub fn choice(&self) -> Option<bool> {
        if self.bos {
            Some(true)
        } else if self.no_bos {
            Some(false)
        } else {
            None
        }
    }
}

const WEIGHTS_HELP: &str = "Matmul weights: auto (bf16 for a bf16 checkpoint, else f32), f32 (exact: the \
                            checkpoint's dtype, f32 activations; also as-loaded), bf16 (bf16 dot products, \
                            AVX512_BF16 on the CPU), int8 (quantized at load, blocks of 32; CPU only) or fp8 \
                            (E4M3 per output channel, activations per token; GPUs of compute capability 8.9+)";

fn parse_weights(s: &str) -> Result<WeightFormat, String> {
    WeightFormat::parse(s).map_err(|e| e.to_string())
}

/// Where the engine runs and how it holds its weights.
#[derive(Args, Debug)]
pub struct EngineOpts {
    /// cpu, or cuda[:0,1,...] (the GPUs of the tensor-parallel ranks; bare `cuda` takes the first --tp)
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Tensor-parallel ranks: CPU threads, or GPUs with a bare --device cuda
    #[arg(long, default_value_t = 1)]
    pub tp: usize,
    #[arg(long, default_value = "auto", value_parser = parse_weights, help = WEIGHTS_HELP)]
    pub weights: WeightFormat,
    /// KV cache: auto (bf16 on CUDA, f32 on the CPU), f32, bf16 or fp8 (E4M3, scale 1); on the CPU the values are
    /// rounded as CUDA stores them (its twin)
    #[arg(long, default_value = "auto", value_parser = |s: &str| KvDtype::parse(s).map_err(|e| e.to_string()))]
    pub kv_cache_dtype: KvDtype,
}

/// The sampling options of `generate` and `chat`.
#[derive(Args, Debug)]
pub struct Sampling {
    /// Most new tokens
    #[arg(long, default_value_t = 64)]
    pub max_tokens: usize,
    /// Fewest new tokens (EOS and stops are held back until then)
    #[arg(long, default_value_t = 0)]
    pub min_tokens: usize,
    /// 0 is greedy
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// 0 is off
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// 1 is off
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Seed of this request's random draws
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// A stop string (repeat for several)
    #[arg(long, allow_hyphen_values = true)]
    pub stop: Vec<String>,
    /// A word never to generate (repeat for several)
    #[arg(long, allow_hyphen_values = true)]
    pub ban: Vec<String>,
    /// No n-gram of this size is generated twice (0 is off)
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    /// Generate past EOS (until --max-tokens or a stop string)
    #[arg(long)]
    pub ignore_eos: bool,
    /// Drop the checkpoint's default stop strings
    #[arg(long)]
    pub no_default_stops: bool,
    /// Structured output, TYPE:TEXT: json_schema:SCHEMA, json_object:, regex:REGEX, lark:GRAMMAR or
    /// choice:["a","b"] (the output matches it and ends when it is complete)
    #[arg(long, value_parser = parse_guide, allow_hyphen_values = true)]
    pub guide: Option<Guide>,
    /// With --json: the K most likely tokens at each generated position, with their log-probs (at most 20)
    #[arg(long, default_value_t = 0)]
    pub top_logprobs: usize,
    /// With --json: each prompt token's log-prob given the tokens before it (and its --top-logprobs alternatives)
    #[arg(long)]
    pub prompt_logprobs: bool,
}

fn parse_guide(s: &str) -> Result<Guide, String> {
    let (kind, text) = s.split_once(':').ok_or("expected TYPE:TEXT, e.g. regex:[0-9]+")?;
    Guide::parse(kind, text).map_err(|e| e.to_string())
}

impl Sampling {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            min_new_tokens: self.min_tokens,
            max_new_tokens: self.max_tokens,
            ignore_eos: self.ignore_eos,
            banned: Vec::new(),
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            stop_strings: self.stop.clone(),
            stop_token_ids: Vec::new(),
            logit_bias: Vec::new(),
            return_logits: Default::default(),
            guide: self.guide.clone(),
            top_logprobs: self.top_logprobs,
            prompt_logprobs: self.prompt_logprobs,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_declaration_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_and_lists_parse_as_the_hand_parser_did() {
        let c = Cli::try_parse_from(["triton-llama", "bench", "--batches", "1,3", "--json"]).unwrap();
        let Cmd::Bench { batches, prefill, steps, weights, out, .. } = c.cmd else { panic!() };
        assert_eq!((batches, prefill, steps, weights, out.json), (vec![1, 3], vec![256], 32, WeightFormat::Auto, true));
        let c = Cli::try_parse_from(["triton-llama", "generate", "m", "--prompt", "-x", "--presence-penalty", "-0.5"]);
        let Cmd::Generate { input, sampling, engine, .. } = c.unwrap().cmd else { panic!() };
        assert_eq!((input.prompt.as_deref(), sampling.presence_penalty, sampling.max_tokens), (Some("-x"), -0.5, 64));
        assert_eq!((engine.device.as_str(), engine.tp), ("cpu", 1));
        let e = Cli::try_parse_from(["triton-llama", "bench", "--batches", "1,x"]).unwrap_err().to_string();
        assert!(e.contains("--batches"), "{e}");
        let e = Cli::try_parse_from(["triton-llama", "generate", "m"]).unwrap_err().to_string();
        assert!(e.contains("--prompt") && e.contains("--messages"), "{e}");
        assert!(Cli::try_parse_from(["triton-llama", "generate", "m", "--prompt", "a", "--messages", "[]"]).is_err());
        assert!(Cli::try_parse_from(["triton-llama", "inspect", "m", "--tp", "2"]).is_err(), "not an inspect option");
        let c = Cli::try_parse_from(["triton-llama", "bench-cuda", "--shape", "70b", "--weights", "fp8"]).unwrap();
        let Cmd::BenchCuda { shape, weights, layers, contexts, .. } = c.cmd else { panic!() };
        assert_eq!((shape.as_str(), weights, layers, contexts), ("70b", WeightFormat::Fp8, None, vec![]));
        let c =
            Cli::try_parse_from(["triton-llama", "bench-cuda", "--shape", "70b-tp2-rank", "--contexts", "128,4096"]);
        let Cmd::BenchCuda { contexts, .. } = c.unwrap().cmd else { panic!() };
        assert_eq!(contexts, vec![128, 4096]);
        assert!(Cli::try_parse_from(["triton-llama", "bench-cuda", "--shape", "13b"]).is_err());
    }
}
