//! Paged KV-cache block allocator: a free list of fixed-size blocks handed to sequences in order.

/// Owns the free list; sequences own their block tables.
#[derive(Debug, Clone)]
pub struct BlockManager {
    block_size: usize,
    num_blocks: usize,
    free: Vec<u32>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        // Pop from the end: hand out low block numbers first.
        BlockManager { block_size, num_blocks, free: (0..num_blocks as u32).rev().collect() }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    pub fn num_used(&self) -> usize {
        self.num_blocks - self.free.len()
    }

    /// Blocks needed to hold `tokens` tokens.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// Extra blocks `table` needs to hold `tokens` tokens.
    pub fn shortfall(&self, table: &[u32], tokens: usize) -> usize {
        self.blocks_for(tokens).saturating_sub(table.len())
    }

    /// Grows `table` to hold `tokens` tokens; false (and no change) if not enough blocks are free.
    pub fn grow(&mut self, table: &mut Vec<u32>, tokens: usize) -> bool {
        let need = self.shortfall(table, tokens);
        if need > self.free.len() {
            return false;
        }
        for _ in 0..need {
            table.push(self.free.pop().expect("checked above"));
        }
        true
    }

    /// Returns every block of `table` to the free list and empties it.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.extend(table.drain(..).rev());
        debug_assert!(self.free.len() <= self.num_blocks);
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
    }
}
