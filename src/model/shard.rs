//! Tensor-parallel split rules: column-parallel QKV and gate/up (split outputs), row-parallel output and
//! down projections (split inputs, all-reduce after), vocabulary-split LM head (all-gather after).
use crate::config::LlamaConfig;
use crate::tensor::Tensor;
use crate::{Error, Result};

/// Which slice of the model a rank holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    pub rank: usize,
    pub world: usize,
}

/// How a canonical tensor is divided across ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Every rank holds all of it (norms, embedding).
    Replicated,
    /// Rows (output features) split in `units` equal units of `unit_rows` rows.
    Rows { units: usize, unit_rows: usize },
    /// Columns (input features) split in `units` equal units of `unit_cols` columns.
    Cols { units: usize, unit_cols: usize },
    /// Vocabulary rows split as evenly as possible (ranks may differ by one row).
    VocabRows,
}

impl ShardSpec {
    /// Checks the model divides evenly across `world` ranks.
    pub fn check(cfg: &LlamaConfig, world: usize) -> Result<()> {
        if world == 0 {
            return Err(Error::Config("tensor-parallel size must be at least 1".into()));
        }
        for (what, v) in [
            ("num_kv_heads", cfg.num_kv_heads),
            ("num_heads", cfg.num_heads),
            ("intermediate_size", cfg.intermediate_size),
        ] {
            if v % world != 0 {
                return Err(Error::Config(format!("tensor-parallel size {world} does not divide {what} = {v}")));
            }
        }
        if cfg.vocab_size < world {
            return Err(Error::Config(format!(
                "vocabulary of {} is smaller than tensor-parallel size {world}",
                cfg.vocab_size
            )));
        }
        Ok(())
    }

    /// The split rule of canonical tensor `name`.
    pub fn rule(cfg: &LlamaConfig, name: &str) -> Split {
        let hd = cfg.head_dim;
        match name.rsplit('.').next().unwrap_or(name) {
            "wq" => Split::Rows { units: cfg.num_heads, unit_rows: hd },
            "wk" | "wv" => Split::Rows { units: cfg.num_kv_heads, unit_rows: hd },
            "w_gate" | "w_up" => Split::Rows { units: cfg.intermediate_size, unit_rows: 1 },
            "wo" => Split::Cols { units: cfg.num_heads, unit_cols: hd },
            "w_down" => Split::Cols { units: cfg.intermediate_size, unit_cols: 1 },
            "lm_head" => Split::VocabRows,
            _ => Split::Replicated,
        }
    }

    /// This rank's [start, end) of `total` items split as evenly as possible.
    pub fn range(&self, total: usize) -> (usize, usize) {
        crate::backend::even_share(total, self.world, self.rank)
    }

    /// This rank's part of a full canonical tensor.
    pub fn shard(&self, cfg: &LlamaConfig, name: &str, t: Tensor) -> Tensor {
        if self.world == 1 {
            return t;
        }
        match Self::rule(cfg, name) {
            Split::Replicated => t,
            Split::Rows { units, unit_rows } => {
                let (a, b) = self.range(units);
                t.slice_rows(a * unit_rows, b * unit_rows)
            }
            Split::Cols { units, unit_cols } => {
                let (a, b) = self.range(units);
                t.slice_cols(a * unit_cols, b * unit_cols)
            }
            Split::VocabRows => {
                let (a, b) = self.range(t.shape[0]);
                t.slice_rows(a, b)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uneven_ranges_cover_everything_once() {
        for world in 1..6 {
            let mut next = 0;
            for rank in 0..world {
                let (a, b) = ShardSpec { rank, world }.range(1003);
                assert_eq!(a, next);
                next = b;
            }
            assert_eq!(next, 1003);
        }
    }
}
