//! Memory for the packed CPU weights: anonymous maps on 2 MiB transparent huge pages where the kernel allows.
//!
//! Batch-1 decode streams every weight once per token, so it runs at the memory system's read rate. On 4 KiB
//! pages a 2 GB model spans half a million pages: the TLB misses on every page, and under a hypervisor each
//! miss is a two-level walk. With `MADV_HUGEPAGE` before the first write, the kernel backs the map with 2 MiB
//! pages (when `/sys/kernel/mm/transparent_hugepage/enabled` is `madvise` or `always`). Buffers under 2 MiB,
//! a refused map, or `TL_HUGEPAGES=0` fall back to the heap; the bytes are the same either way.
use bytemuck::Pod;
use memmap2::{Advice, MmapMut, MmapOptions};
use std::ops::{Deref, DerefMut};
use std::sync::OnceLock;

const HUGE: usize = 2 << 20;

/// A zero-initialised `[T]` whose storage is huge-page backed where possible.
pub struct WeightMem<T: Pod> {
    store: Store<T>,
    len: usize,
}

enum Store<T> {
    Heap(Vec<T>),
    /// `off`: the first 2 MiB boundary inside the map; the slice starts there.
    Map {
        map: MmapMut,
        off: usize,
    },
}

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("TL_HUGEPAGES").map_or(true, |v| v != "0"))
}

impl<T: Pod> WeightMem<T> {
    /// `len` zeroed elements.
    pub fn zeroed(len: usize) -> WeightMem<T> {
        let bytes = len * size_of::<T>();
        let store = if enabled() && bytes >= HUGE { Self::map(bytes) } else { None };
        WeightMem { store: store.unwrap_or_else(|| Store::Heap(vec![T::zeroed(); len])), len }
    }

    fn map(bytes: usize) -> Option<Store<T>> {
        let span = bytes.div_ceil(HUGE) * HUGE;
        let map = match MmapOptions::new().len(span + HUGE).map_anon() {
            Ok(m) => m,
            Err(e) => {
                log::warn!("weights: anonymous map of {span} bytes refused ({e}); using the heap");
                return None;
            }
        };
        let off = (map.as_ptr() as usize).next_multiple_of(HUGE) - map.as_ptr() as usize;
        // Advice only: where transparent huge pages are off, this fails and the map keeps 4 KiB pages.
        if let Err(e) = map.advise_range(Advice::HugePage, off, span) {
            log::debug!("weights: MADV_HUGEPAGE refused ({e}); 4 KiB pages");
        }
        Some(Store::Map { map, off })
    }

    /// Whether the storage is a huge-page-advised map (not whether the kernel granted the pages).
    pub fn is_mapped(&self) -> bool {
        matches!(self.store, Store::Map { .. })
    }
}

impl<T: Pod> Deref for WeightMem<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.store {
            Store::Heap(v) => v,
            Store::Map { map, off } => bytemuck::cast_slice(&map[*off..*off + self.len * size_of::<T>()]),
        }
    }
}

impl<T: Pod> DerefMut for WeightMem<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        let len = self.len;
        match &mut self.store {
            Store::Heap(v) => v,
            Store::Map { map, off } => bytemuck::cast_slice_mut(&mut map[*off..*off + len * size_of::<T>()]),
        }
    }
}

impl<T: Pod> Clone for WeightMem<T> {
    fn clone(&self) -> Self {
        let mut c = WeightMem::zeroed(self.len);
        c.copy_from_slice(self);
        c
    }
}

impl<T: Pod + PartialEq> PartialEq for WeightMem<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: Pod> std::fmt::Debug for WeightMem<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WeightMem {{ len: {}, mapped: {} }}", self.len, self.is_mapped())
    }
}

/// Kilobytes of this process's anonymous memory on transparent huge pages (`AnonHugePages` of
/// `/proc/self/smaps_rollup`); `None` where the kernel does not say.
pub fn anon_huge_kb() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_buffers_hold_their_values() {
        for len in [0usize, 5, HUGE / 2 + 3, 3 * HUGE / 2 + 1] {
            let mut m = WeightMem::<u16>::zeroed(len);
            assert_eq!(m.len(), len);
            assert!(m.iter().all(|&v| v == 0));
            assert_eq!(m.is_mapped(), enabled() && len * 2 >= HUGE, "len {len}");
            for (i, v) in m.iter_mut().enumerate() {
                *v = (i * 7919 % 65521) as u16;
            }
            let c = m.clone();
            assert_eq!(c, m);
            assert!(c.iter().enumerate().all(|(i, &v)| v == (i * 7919 % 65521) as u16));
            if len > 0 {
                assert_eq!(m.as_ptr() as usize % if m.is_mapped() { HUGE } else { 2 }, 0);
            }
        }
    }
}
