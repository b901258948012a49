//! `triton-llama demo-model DIR`: a small deterministic Llama in Hugging Face layout for demos and benchmarks
//! without a real checkpoint: a BPE tokenizer trained with the `tokenizers` crate on `src/demo_corpus.txt`
//! (the tokenizer test strings, compiled in), and pseudo-random bf16 weights (`loader::random`) sized to its
//! vocabulary. Same binary, same bytes. Its output is not meaningful text.
use crate::config::LlamaConfig;
use crate::loader::random::RandomSource;
use crate::loader::{CheckpointSource, canonical_names};
use crate::tensor::{DType, TensorData};
use crate::{Error, Result};
use serde_json::json;
use std::path::Path;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper, TokenizerBuilder,
};

/// The training text, fixed at build time (a file of its own, so editing docs or code never changes the demo model).
const CORPUS: [&str; 1] = [include_str!("demo_corpus.txt")];
const VOCAB: usize = 2000;
const SEED: u64 = 0xDE40;

fn tok_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("demo tokenizer: {e}"))
}

/// Trains the demo tokenizer and returns its `tokenizer.json` text.
pub fn train_tokenizer() -> Result<String> {
    let specials: Vec<AddedToken> = ["<unk>", "<s>", "</s>"].iter().map(|t| AddedToken::from(*t, true)).collect();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(VOCAB)
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .build();
    let meta = Metaspace::new('▁', PrependScheme::First, true);
    let model = BPE::builder().unk_token("<unk>".into()).build().map_err(tok_err)?;
    let mut tok =
        TokenizerBuilder::<BPE, NormalizerWrapper, PreTokenizerWrapper, PostProcessorWrapper, DecoderWrapper>::new()
            .with_model(model)
            .with_pre_tokenizer(Some(meta.clone().into()))
            .with_decoder(Some(meta.into()))
            .build()
            .map_err(tok_err)?;
    let lines: Vec<&str> = CORPUS.iter().flat_map(|c| c.lines()).filter(|l| !l.trim().is_empty()).collect();
    tok.train(&mut trainer, lines.into_iter()).map_err(tok_err)?;
    tok.to_string(true).map_err(tok_err)
}

/// The demo model's shape for a vocabulary of `vocab` entries.
pub fn demo_config(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 256,
        intermediate_size: 688,
        num_layers: 4,
        num_heads: 8,
        num_kv_heads: 4,
        head_dim: 32,
        vocab_size: vocab,
        max_position_embeddings: 2048,
        rms_norm_eps: 1e-5,
        rope_theta: 10000.0,
        rope_scaling: 1.0,
        bos_id: 1,
        eos_id: 2,
    }
}

fn hf_name(canonical: &str) -> String {
    match canonical {
        "tok_emb" => "model.embed_tokens.weight".into(),
        "final_norm" => "model.norm.weight".into(),
        "lm_head" => "lm_head.weight".into(),
        _ => {
            let (i, t) = canonical.trim_start_matches("layers.").split_once('.').unwrap_or(("0", canonical));
            let hf = match t {
                "attn_norm" => "input_layernorm",
                "wq" => "self_attn.q_proj",
                "wk" => "self_attn.k_proj",
                "wv" => "self_attn.v_proj",
                "wo" => "self_attn.o_proj",
                "mlp_norm" => "post_attention_layernorm",
                "w_gate" => "mlp.gate_proj",
                "w_up" => "mlp.up_proj",
                _ => "mlp.down_proj",
            };
            format!("model.layers.{i}.{hf}.weight")
        }
    }
}

/// Writes `config.json`, `generation_config.json`, `tokenizer.json` and `model.safetensors` into `dir`.
pub fn write(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let tok_json = train_tokenizer()?;
    let tok = crate::tokenizer::Tokenizer::from_json_bytes(tok_json.as_bytes(), &dir.join("tokenizer.json"))?;
    let cfg = demo_config(tok.vocab_size());
    let (bos, eos) = (tok.bos_id(), tok.eos_id());
    let cfg = LlamaConfig { bos_id: bos, eos_id: eos, ..cfg };
    let config = json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.max_position_embeddings,
        "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta, "bos_token_id": bos, "eos_token_id": eos,
        "tie_word_embeddings": false, "hidden_act": "silu",
        "_comment": "triton-llama demo model: random weights, meaningless output",
    });
    let write =
        |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).map_err(|e| Error::io(dir.join(name), e));
    write(
        "config.json",
        serde_json::to_string_pretty(&config).map_err(|e| Error::Internal(e.to_string()))?.as_bytes(),
    )?;
    write("generation_config.json", json!({"bos_token_id": bos, "eos_token_id": eos}).to_string().as_bytes())?;
    write("tokenizer.json", tok_json.as_bytes())?;
    let src = RandomSource::new(cfg.clone(), DType::BF16, SEED)?;
    let mut tensors = Vec::new();
    for name in canonical_names(&cfg) {
        let t = src.load(&name)?;
        let TensorData::BF16(v) = t.data else { return Err(Error::Internal("demo weights must be bf16".into())) };
        tensors.push((hf_name(&name), t.shape, bytemuck::cast_slice::<_, u8>(&v).to_vec()));
    }
    let views = tensors
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, s.clone(), b).map(|v| (n.clone(), v))
        })
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Internal(format!("safetensors: {e}")))?;
    let path = dir.join("model.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path)
        .map_err(|e| Error::Internal(format!("{}: {e}", path.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokenizer_training_is_deterministic() {
        let a = super::train_tokenizer().unwrap();
        assert_eq!(a, super::train_tokenizer().unwrap());
        let t = crate::tokenizer::Tokenizer::from_json_bytes(a.as_bytes(), std::path::Path::new("t.json")).unwrap();
        assert!(t.vocab_size() > 500);
        let ids = t.encode("Triton serves the model", false).unwrap();
        assert_eq!(t.decode(&ids).unwrap(), "Triton serves the model");
    }
}
