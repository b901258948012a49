//! Step metadata for the attention kernels: `StepMeta` validated against the cache size and packed into one
//! int32 array (uploaded once per step and reused by every layer), with the decode/prefill work split.
use crate::backend::CheckedStep;
use crate::{Error, Result};
use cudarc::driver::CudaSlice;

/// How the attention kernels divide their work (`TL_DECODE_SPLIT` and `TL_PREFILL_ROWS` of csrc/ops.h, passed in
/// by the caller so this module stays plain data, below the FFI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// Keys per split of the decode kernel.
    pub decode_split: usize,
    /// Query rows per tile of the prefill kernel.
    pub prefill_rows: usize,
}

/// Offsets (in int32 elements) of each array inside the packed buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Offsets {
    pub positions: usize,
    pub slots: usize,
    pub tok_seq: usize,
    pub seq_start: usize,
    pub seq_len: usize,
    pub seq_ctx: usize,
    pub seq_bt: usize,
    pub block_tables: usize,
    pub dec_tokens: usize,
    pub tiles: usize,
}

/// The packed host form; equal packs mean the device copy can be reused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostMeta {
    pub data: Vec<i32>,
    pub off: Offsets,
    pub n_tokens: usize,
    pub n_dec: usize,
    pub n_tiles: usize,
    pub dec_splits: usize,
    pub block_size: usize,
    pub num_slots: usize,
    /// Query rows per prefill tile (`Tiling::prefill_rows`): which prefill kernel the pack is for.
    pub tile_rows: usize,
}

/// The packed metadata on the device, with the host pack it was uploaded from (its sizes and offsets,
/// reached through `Deref`).
pub struct DeviceMeta {
    pub buf: CudaSlice<i32>,
    pub host: HostMeta,
}

impl std::ops::Deref for DeviceMeta {
    type Target = HostMeta;
    fn deref(&self) -> &HostMeta {
        &self.host
    }
}

fn malformed(msg: String) -> Error {
    Error::Internal(format!("step metadata: {msg}"))
}

fn i32_of(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| malformed(format!("{v} exceeds int32")))
}

/// Packs a checked step for a cache of `num_slots` slots, cut into the kernels' `tiling`. The step's own
/// consistency was checked once before the backend (`StepMeta::check`); what depends on this device is checked
/// here (slots and blocks inside the cache, int32 ranges), so no index the kernels dereference is out of bounds.
pub fn pack(meta: CheckedStep, num_slots: usize, tiling: Tiling) -> Result<HostMeta> {
    let n = meta.n_tokens();
    let bs = meta.block_size;
    if let Some(&s) = meta.slots.iter().find(|&&s| s as usize >= num_slots) {
        return Err(malformed(format!("slot {s} outside a cache of {num_slots} slots")));
    }
    let mut tok_seq = vec![-1i32; n];
    let (mut seq_start, mut seq_len, mut seq_ctx, mut seq_bt) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut tables, mut dec, mut tiles) = (Vec::new(), Vec::new(), Vec::new());
    let mut max_dec_ctx = 0usize;
    for (s, m) in meta.seqs.iter().enumerate() {
        let needed = m.context_len.div_ceil(bs);
        if let Some(&b) = m.block_table[..needed].iter().find(|&&b| (b as usize + 1) * bs > num_slots) {
            return Err(malformed(format!("sequence {s}: block {b} outside a cache of {num_slots} slots")));
        }
        tok_seq[m.token_start..m.token_start + m.n_tokens].fill(s as i32);
        seq_start.push(i32_of(m.token_start)?);
        seq_len.push(i32_of(m.n_tokens)?);
        seq_ctx.push(i32_of(m.context_len)?);
        seq_bt.push(i32_of(tables.len())?);
        for &b in &m.block_table[..needed] {
            tables.push(i32_of(b as usize)?);
        }
        if m.n_tokens == 1 {
            dec.push(i32_of(m.token_start)?);
            max_dec_ctx = max_dec_ctx.max(m.context_len);
        } else {
            for r0 in (0..m.n_tokens).step_by(tiling.prefill_rows.max(1)) {
                tiles.push(s as i32);
                tiles.push(i32_of(r0)?);
            }
        }
    }
    let dec_splits = max_dec_ctx.div_ceil(tiling.decode_split.max(1)).max(1);
    let mut data = Vec::with_capacity(3 * n + 4 * meta.seqs.len() + tables.len() + dec.len() + tiles.len());
    let mut off = Offsets::default();
    let mut put = |v: &[i32]| {
        let at = data.len();
        data.extend_from_slice(v);
        at
    };
    off.positions = put(&meta.positions.iter().map(|&p| p as i32).collect::<Vec<_>>());
    off.slots = put(&meta.slots.iter().map(|&p| p as i32).collect::<Vec<_>>());
    off.tok_seq = put(&tok_seq);
    off.seq_start = put(&seq_start);
    off.seq_len = put(&seq_len);
    off.seq_ctx = put(&seq_ctx);
    off.seq_bt = put(&seq_bt);
    off.block_tables = put(&tables);
    off.dec_tokens = put(&dec);
    off.tiles = put(&tiles);
    if data.is_empty() {
        data.push(0);
    }
    if meta.positions.iter().any(|&p| p > i32::MAX as u32) {
        return Err(malformed("position exceeds int32".into()));
    }
    Ok(HostMeta {
        data,
        off,
        n_tokens: n,
        n_dec: dec.len(),
        n_tiles: tiles.len() / 2,
        dec_splits,
        block_size: bs,
        num_slots,
        tile_rows: tiling.prefill_rows.max(1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StepMeta;
    use crate::backend::cuda::ffi::{TL_DECODE_SPLIT, TL_PREFILL_ROWS};
    use crate::backend::tests::step;

    /// `StepMeta::check`, then `meta::pack` with the kernels' tiling.
    fn pack(meta: &StepMeta, num_slots: usize) -> Result<HostMeta> {
        let tiling = Tiling { decode_split: TL_DECODE_SPLIT as usize, prefill_rows: TL_PREFILL_ROWS as usize };
        super::pack(meta.check()?, num_slots, tiling)
    }

    #[test]
    fn packs_decode_and_prefill_work() {
        let h = pack(&step(), 64).unwrap();
        assert_eq!((h.n_dec, h.n_tiles, h.dec_splits), (1, 1, 1));
        assert_eq!(&h.data[h.off.tok_seq..h.off.tok_seq + 4], &[0, 0, 0, 1]);
        assert_eq!(&h.data[h.off.block_tables..h.off.block_tables + 3], &[1, 2, 3]);
    }

    /// The tensor-core kernel's 64-row tiles: a 3-token chunk is one tile either way, a 130-token one 3 (not 9).
    #[test]
    fn tiles_follow_the_tiling() {
        use crate::backend::cuda::ffi::TL_PREFILL_ROWS_TC;
        let mut s = StepMeta { block_size: 16, ..Default::default() };
        for (start, n) in [(0usize, 3usize), (3, 130)] {
            s.positions.extend((0..n as u32).collect::<Vec<_>>());
            s.slots.extend((0..n as u32).map(|p| p + if start == 0 { 0 } else { 16 }));
            let table = if start == 0 { vec![0] } else { (1..10).collect() };
            s.seqs.push(crate::backend::SeqMeta {
                token_start: start,
                n_tokens: n,
                context_len: n,
                block_table: table,
            });
        }
        let packed = |rows: u32| {
            let t = Tiling { decode_split: TL_DECODE_SPLIT as usize, prefill_rows: rows as usize };
            super::pack(s.check().unwrap(), 1024, t).unwrap()
        };
        let (f32_tiles, tc) = (packed(TL_PREFILL_ROWS), packed(TL_PREFILL_ROWS_TC));
        assert_eq!((f32_tiles.n_tiles, f32_tiles.tile_rows), (1 + 9, 16));
        assert_eq!((tc.n_tiles, tc.tile_rows), (1 + 3, 64));
        assert_eq!(&tc.data[tc.off.tiles..tc.off.tiles + 8], &[0, 0, 1, 0, 1, 64, 1, 128]);
    }

    #[test]
    fn rejects_out_of_range_slots_and_blocks() {
        assert!(pack(&step(), 32).is_err()); // slot 39 and block 3 outside 32 slots
        let mut s = step();
        s.seqs[1].context_len = 9; // needs 3 blocks
        assert!(pack(&s, 64).is_err());
        let mut s = step();
        s.seqs[0].n_tokens = 2; // token 2 unowned
        assert!(pack(&s, 64).is_err());
    }
}
