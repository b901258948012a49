//! Paged KV-cache blocks with prefix caching: reference-counted blocks, a content-addressed index of full
//! blocks (key = hash chained over the block's tokens and its predecessor's key), and least-recently-used
//! eviction of the cached blocks no sequence holds.
//!
//! A block is in exactly one state: *used* (held by at least one sequence), *cached* (held by none, but its
//! full content is indexed and a later prompt with the same prefix can take it back) or *free* (holds nothing
//! reusable). Allocation takes a free block first, else evicts the least recently released cached one.
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// Content key of a full block: identifies the whole prefix up to and including the block.
pub type BlockKey = u128;

/// The key of a block holding `tokens` after the prefix keyed `parent` (`None` for the first block, which is
/// keyed by `salt` instead: the model identity, so different models never share). Two 64-bit SipHash values
/// with different seeds make the key 128 bits, so an accidental collision is out of practical reach.
pub fn block_key(salt: u64, parent: Option<BlockKey>, tokens: &[u32]) -> BlockKey {
    let half = |seed: u64| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (seed, salt, parent, tokens).hash(&mut h);
        h.finish() as u128
    };
    (half(0x9E37_79B9_7F4A_7C15) << 64) | half(0xC2B2_AE3D_27D4_EB4F)
}

/// Owns every block's state; sequences own their block tables (which may share blocks).
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: usize,
    num_blocks: usize,
    /// Blocks holding nothing reusable (popped from the end: low numbers first).
    free: Vec<u32>,
    /// Sequences holding each block.
    ref_count: Vec<u32>,
    /// Each indexed block's content key.
    key: Vec<Option<BlockKey>>,
    /// Content key -> the block holding it (used or cached).
    index: HashMap<BlockKey, u32>,
    /// Cached blocks (indexed, held by nobody) by release tick: the first entry is evicted first.
    lru: BTreeMap<u64, u32>,
    /// Each cached block's entry in `lru`.
    released_at: Vec<u64>,
    tick: u64,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        BlockManager {
            block_size,
            num_blocks,
            free: (0..num_blocks as u32).rev().collect(),
            ref_count: vec![0; num_blocks],
            key: vec![None; num_blocks],
            index: HashMap::new(),
            lru: BTreeMap::new(),
            released_at: vec![0; num_blocks],
            tick: 0,
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    /// Blocks an allocation can take now: free ones plus cached ones (evicted on demand).
    pub fn num_available(&self) -> usize {
        self.free.len() + self.lru.len()
    }
    /// Blocks holding nothing reusable.
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    /// Cached blocks no sequence holds (reusable by a matching prefix, evictable).
    pub fn num_cached(&self) -> usize {
        self.lru.len()
    }
    /// Blocks held by at least one sequence.
    pub fn num_used(&self) -> usize {
        self.num_blocks - self.num_available()
    }
    /// Sequences holding `block`.
    pub fn ref_count(&self, block: u32) -> u32 {
        self.ref_count[block as usize]
    }

    /// Whether `block`'s content is indexed (then it is full, computed and never written again).
    pub fn is_indexed(&self, block: u32) -> bool {
        self.key[block as usize].is_some()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Extra blocks `table` needs to hold `tokens` tokens.
    pub fn shortfall(&self, table: &[u32], tokens: usize) -> usize {
        self.blocks_for(tokens).saturating_sub(table.len())
    }

    /// Grows `table` to hold `tokens` tokens with private blocks (free ones first, then the least recently
    /// used cached ones, whose content is forgotten); false (and no change) if not enough are available.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.shortfall(table, tokens);
        if need > self.num_available() {
            return false;
        }
        for _ in 0..need {
            let b = match self.free.pop() {
                Some(b) => b,
                None => {
                    let (_, b) = self.lru.pop_first().expect("checked above");
                    let k = self.key[b as usize].take().expect("cached blocks are indexed");
                    self.index.remove(&k);
                    b
                }
            };
            self.ref_count[b as usize] = 1;
            table.push(b);
        }
        true
    }

    /// Drops one reference to every block of `table` and empties it. Blocks nobody holds any more become
    /// cached if indexed (the table's tail first in eviction order: a prefix's end is the least shared part),
    /// else free.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..).rev() {
            let i = b as usize;
            debug_assert!(self.ref_count[i] > 0, "block {b} released more often than taken");
            self.ref_count[i] -= 1;
            if self.ref_count[i] == 0 {
                if self.key[i].is_some() {
                    self.tick += 1;
                    self.released_at[i] = self.tick;
                    self.lru.insert(self.tick, b);
                } else {
                    self.free.push(b);
                }
            }
        }
    }

    /// The block holding the content keyed `key`, if indexed (used or cached).
    pub fn lookup(&self, key: BlockKey) -> Option<u32> {
        self.index.get(&key).copied()
    }

    /// Takes one more reference to an indexed block found by `lookup` (a cached one stops being evictable).
    pub fn take(&mut self, block: u32) {
        let i = block as usize;
        debug_assert!(self.key[i].is_some(), "only indexed blocks are shared");
        if self.ref_count[i] == 0 {
            self.lru.remove(&self.released_at[i]);
        }
        self.ref_count[i] += 1;
    }

    /// Indexes the full, computed `block` under `key` so later prompts can share it. No-op if the block is
    /// already indexed or another block already holds this content (that one stays the shared copy).
    pub fn register(&mut self, block: u32, key: BlockKey) {
        let i = block as usize;
        debug_assert!(self.ref_count[i] > 0, "only a held block is registered");
        if self.key[i].is_some() || self.index.contains_key(&key) {
            return;
        }
        self.key[i] = Some(key);
        self.index.insert(key, block);
    }

    /// Forgets every cached block (they become free); used blocks keep their index entries.
    pub fn clear_cached(&mut self) {
        while let Some((_, b)) = self.lru.pop_first() {
            let k = self.key[b as usize].take().expect("cached blocks are indexed");
            self.index.remove(&k);
            self.free.push(b);
        }
    }

    /// Checks the internal invariants (each block in exactly one state, the index and keys agree); returns
    /// the first violation found. For tests.
    pub fn check(&self) -> std::result::Result<(), String> {
        let mut seen = vec![0u8; self.num_blocks];
        for &b in &self.free {
            seen[b as usize] += 1;
            if self.ref_count[b as usize] != 0 || self.key[b as usize].is_some() {
                return Err(format!("free block {b} is held or indexed"));
            }
        }
        for (&t, &b) in &self.lru {
            seen[b as usize] += 1;
            if self.ref_count[b as usize] != 0 || self.key[b as usize].is_none() || self.released_at[b as usize] != t {
                return Err(format!("cached block {b} is held, not indexed or misfiled"));
            }
        }
        for (b, &states) in seen.iter().enumerate() {
            let used = self.ref_count[b] > 0;
            if states + used as u8 != 1 {
                return Err(format!("block {b} is in {} states", states + used as u8));
            }
            if let Some(k) = self.key[b]
                && self.index.get(&k) != Some(&(b as u32))
            {
                return Err(format!("block {b}'s key is not indexed to it"));
            }
        }
        if self.index.len() != self.key.iter().filter(|k| k.is_some()).count() {
            return Err("the index has entries no block claims".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_and_release_round_trip() {
        let mut bm = BlockManager::new(4, 16);
        let mut a = Vec::new();
        assert!(bm.grow(&mut a, 17));
        assert_eq!(a, vec![0, 1]);
        assert!(bm.grow(&mut a, 32));
        assert_eq!(a.len(), 2, "32 tokens still fit in 2 blocks");
        let mut b = Vec::new();
        assert!(!bm.grow(&mut b, 48), "3 blocks needed, 2 free");
        assert!(b.is_empty());
        assert!(bm.grow(&mut b, 32));
        assert_eq!(bm.num_free(), 0);
        bm.release(&mut a);
        assert_eq!(bm.num_free(), 2);
        assert!(a.is_empty());
        bm.release(&mut b);
        assert_eq!(bm.num_free(), 4);
        bm.check().unwrap();
    }

    #[test]
    fn keys_chain_over_the_prefix() {
        let k1 = block_key(0, None, &[1, 2]);
        assert_eq!(k1, block_key(0, None, &[1, 2]));
        assert_ne!(k1, block_key(1, None, &[1, 2]), "the model identity is part of the key");
        assert_ne!(block_key(0, Some(k1), &[3, 4]), block_key(0, Some(block_key(0, None, &[9, 2])), &[3, 4]));
    }

    #[test]
    fn shared_block_is_refcounted_then_cached_then_evicted_lru() {
        let mut bm = BlockManager::new(3, 2);
        let mut a = Vec::new();
        assert!(bm.grow(&mut a, 4));
        bm.register(a[0], 10);
        bm.register(a[1], 11);
        let mut b = Vec::new();
        let hit = bm.lookup(10).unwrap();
        bm.take(hit);
        b.push(hit);
        assert_eq!((bm.ref_count(a[0]), bm.ref_count(a[1])), (2, 1));
        bm.release(&mut a);
        assert_eq!((bm.num_used(), bm.num_cached(), bm.num_free()), (1, 1, 1));
        bm.release(&mut b);
        assert_eq!((bm.num_used(), bm.num_cached(), bm.num_free()), (0, 2, 1));
        bm.check().unwrap();
        // Block 1 (key 11) was released before block 0 (key 10): after the free block, it goes first.
        let mut c = Vec::new();
        assert!(bm.grow(&mut c, 4));
        assert_eq!(c, vec![2, 1]);
        assert_eq!((bm.lookup(10), bm.lookup(11)), (Some(0), None));
        bm.check().unwrap();
    }
}
