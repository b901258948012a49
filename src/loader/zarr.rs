//! Zarr v2 arrays as Megatron-core dist-ckpt writes them: uncompressed, C order, little-endian chunks.
//!
//! `.zarray` is validated strictly (dtype `bfloat16`/`<f2`/`<f4`, no compressor, no filters, order C,
//! `dimension_separator` `.` or `/`). A region is read by visiting each chunk it touches and reading the
//! overlapping runs straight into their place in the caller's buffer; ragged edge chunks (padded to full size
//! on disk) are handled. Every chunk file must exist and hold exactly prod(chunks) × itemsize bytes.
use super::tarfs::Fs;
use crate::tensor::DType;
use crate::{Error, Result};
use serde_json::Value;
use std::path::PathBuf;

/// Most dimensions accepted in a `.zarray`.
const MAX_NDIM: usize = 8;
/// Most chunk files one array may have (guards loops against absurd metadata).
const MAX_CHUNKS: u64 = 1 << 24;
/// Runs shorter than this are gathered through a scratch buffer instead of one read each.
const SMALL_RUN: usize = 64 << 10;
/// Scratch buffer size for gathered reads.
const SCRATCH: usize = 8 << 20;

/// One zarr array of a dist-ckpt folder.
#[derive(Debug, Clone)]
pub struct ZArray {
    /// Global key, i.e. the folder name (`model.decoder.layers.self_attention.linear_qkv.weight`).
    pub key: String,
    /// Folder of the array inside the container (`.../model_weights/<key>`).
    pub dir: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub chunks: Vec<usize>,
    /// Chunk key separator: `.` (default) or `/`.
    pub separator: char,
    /// Bytes of one chunk file.
    pub chunk_bytes: u64,
}

fn dims(v: Option<&Value>, what: &str, bad: &dyn Fn(String) -> Error) -> Result<Vec<usize>> {
    let arr = v.and_then(Value::as_array).ok_or_else(|| bad(format!("`{what}` is missing or not a list")))?;
    if arr.is_empty() || arr.len() > MAX_NDIM {
        return Err(bad(format!("`{what}` has {} dimensions", arr.len())));
    }
    arr.iter()
        .map(|x| match x.as_u64() {
            Some(n) if n > 0 && n <= u32::MAX as u64 => Ok(n as usize),
            _ => Err(bad(format!("`{what}` has an invalid entry {x}"))),
        })
        .collect()
}

impl ZArray {
    /// Parses the `.zarray` of the array in folder `dir` of `fs`.
    pub fn open(fs: &Fs, dir: &str, key: &str) -> Result<ZArray> {
        let name = format!("{dir}/.zarray");
        let bytes = fs.read(&name)?;
        Self::parse(fs.display(&name), key, dir, &bytes)
    }

    /// Parses `.zarray` JSON; `origin` names the file in errors.
    pub fn parse(origin: PathBuf, key: &str, dir: &str, bytes: &[u8]) -> Result<ZArray> {
        let bad = |m: String| Error::ckpt(&origin, format!("array `{key}`: {m}"));
        let unsupported =
            |format: String, hint: &str| Error::UnsupportedFormat { path: origin.clone(), format, hint: hint.into() };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid .zarray JSON: {e}")))?;
        if !v.is_object() {
            return Err(bad(".zarray is not a JSON object".into()));
        }
        match v.get("zarr_format").and_then(Value::as_u64) {
            Some(2) => {}
            other => {
                return Err(unsupported(
                    format!("zarr_format {other:?}"),
                    "only zarr v2 arrays (Megatron-core dist-ckpt) are read",
                ));
            }
        }
        let dtype = match v.get("dtype") {
            Some(Value::String(s)) => match s.as_str() {
                "bfloat16" => DType::BF16,
                "<f2" => DType::F16,
                "<f4" => DType::F32,
                s if s.starts_with('>') => {
                    return Err(unsupported(
                        format!("big-endian zarr dtype `{s}` in array `{key}`"),
                        "only little-endian arrays are read",
                    ));
                }
                s => {
                    return Err(unsupported(
                        format!("zarr dtype `{s}` in array `{key}`"),
                        "expected `bfloat16`, `<f2` or `<f4`",
                    ));
                }
            },
            other => return Err(bad(format!("`dtype` is {other:?}, expected a string"))),
        };
        for k in ["compressor", "filters"] {
            match v.get(k) {
                None | Some(Value::Null) => {}
                Some(c) => {
                    return Err(unsupported(
                        format!("zarr {k} {c} in array `{key}`"),
                        "mcore dist-ckpt arrays are written uncompressed; re-save without compression",
                    ));
                }
            }
        }
        match v.get("order").and_then(Value::as_str) {
            Some("C") | None => {}
            Some(o) => {
                return Err(unsupported(format!("zarr order `{o}` in array `{key}`"), "only C-order arrays are read"));
            }
        }
        let separator = match v.get("dimension_separator") {
            None | Some(Value::Null) => '.',
            Some(Value::String(s)) if s == "." => '.',
            Some(Value::String(s)) if s == "/" => '/',
            Some(s) => return Err(bad(format!("invalid dimension_separator {s}"))),
        };
        let shape = dims(v.get("shape"), "shape", &bad)?;
        let chunks = dims(v.get("chunks"), "chunks", &bad)?;
        if shape.len() != chunks.len() {
            return Err(bad(format!("shape {shape:?} and chunks {chunks:?} differ in rank")));
        }
        let over = || bad("chunk size overflows".into());
        let chunk_elems = chunks.iter().try_fold(1u64, |a, &c| a.checked_mul(c as u64)).ok_or_else(over)?;
        let chunk_bytes = chunk_elems.checked_mul(dtype.size() as u64).ok_or_else(over)?;
        let za = ZArray { key: key.into(), dir: dir.into(), dtype, shape, chunks, separator, chunk_bytes };
        let n = za.grid().iter().try_fold(1u64, |a, &g| a.checked_mul(g as u64));
        if n.is_none_or(|n| n > MAX_CHUNKS) {
            return Err(bad(format!("too many chunks (shape {:?}, chunks {:?})", za.shape, za.chunks)));
        }
        Ok(za)
    }

    /// Number of chunks along each axis (the last one may be ragged).
    pub fn grid(&self) -> Vec<usize> {
        self.shape.iter().zip(&self.chunks).map(|(s, c)| s.div_ceil(*c)).collect()
    }

    /// Container name of the chunk file at grid index `idx` (`dir/0.3.0` or `dir/0/3/0`).
    pub fn chunk_name(&self, idx: &[usize]) -> String {
        let sep = self.separator.to_string();
        let key: Vec<String> = idx.iter().map(usize::to_string).collect();
        format!("{}/{}", self.dir, key.join(&sep))
    }

    /// Checks that chunk file `idx` exists with exactly `chunk_bytes` bytes.
    fn check_chunk(&self, fs: &Fs, idx: &[usize]) -> Result<String> {
        let name = self.chunk_name(idx);
        let Some(size) = fs.size(&name) else {
            return Err(Error::ckpt(
                fs.path().join(&name),
                format!("chunk file of array `{}` is missing (dist-ckpt arrays have no fill value)", self.key),
            ));
        };
        if size != self.chunk_bytes {
            if size < 512 {
                let mut head = vec![0u8; size as usize];
                fs.read_at(&name, 0, &mut head)?;
                super::check_lfs(&fs.display(&name), &head)?;
            }
            if size < self.chunk_bytes {
                return Err(Error::Truncated {
                    path: fs.display(&name),
                    name: self.key.clone(),
                    expected: self.chunk_bytes,
                    got: size,
                });
            }
            return Err(Error::ckpt(
                fs.display(&name),
                format!(
                    "chunk of array `{}` has {size} bytes, expected {} (chunks {:?} of {})",
                    self.key,
                    self.chunk_bytes,
                    self.chunks,
                    self.dtype.name()
                ),
            ));
        }
        Ok(name)
    }

    /// Checks every chunk file of the array (existence and exact size) without reading data.
    pub fn check_all_chunks(&self, fs: &Fs) -> Result<()> {
        let grid = self.grid();
        let mut idx = vec![0usize; grid.len()];
        loop {
            self.check_chunk(fs, &idx)?;
            if !odometer(&mut idx, &grid) {
                return Ok(());
            }
        }
    }

    /// Bytes of a region of this array (checked).
    pub fn region_bytes(&self, size: &[usize]) -> Option<usize> {
        size.iter().try_fold(self.dtype.size(), |a, &s| a.checked_mul(s))
    }

    /// Reads region [start, start+size) into `out` (C order over `size`, stored dtype, little-endian).
    pub fn read_region(&self, fs: &Fs, start: &[usize], size: &[usize], out: &mut [u8]) -> Result<()> {
        let nd = self.shape.len();
        let err = |m: String| Error::Internal(format!("array `{}`: {m}", self.key));
        if start.len() != nd || size.len() != nd {
            return Err(err(format!("region rank {} != array rank {nd}", start.len())));
        }
        for a in 0..nd {
            if size[a] == 0 || start[a].checked_add(size[a]).is_none_or(|e| e > self.shape[a]) {
                return Err(err(format!("region {start:?}+{size:?} outside shape {:?}", self.shape)));
            }
        }
        if self.region_bytes(size) != Some(out.len()) {
            return Err(err(format!("buffer of {} bytes for region {size:?}", out.len())));
        }
        let isz = self.dtype.size();
        // Strides in elements: within a full chunk, and within the region.
        let cstride = strides(&self.chunks);
        let rstride = strides(size);
        let first: Vec<usize> = (0..nd).map(|a| start[a] / self.chunks[a]).collect();
        let last: Vec<usize> = (0..nd).map(|a| (start[a] + size[a] - 1) / self.chunks[a]).collect();
        let span: Vec<usize> = (0..nd).map(|a| last[a] - first[a] + 1).collect();
        let mut rel = vec![0usize; nd];
        let mut scratch = Vec::new();
        loop {
            let cidx: Vec<usize> = (0..nd).map(|a| first[a] + rel[a]).collect();
            let name = self.check_chunk(fs, &cidx)?;
            let h = fs.handle(&name)?;
            // Overlap of this chunk with the region, in global coordinates.
            let origin: Vec<usize> = (0..nd).map(|a| cidx[a] * self.chunks[a]).collect();
            let lo: Vec<usize> = (0..nd).map(|a| origin[a].max(start[a])).collect();
            let hi: Vec<usize> = (0..nd).map(|a| (origin[a] + self.chunks[a]).min(start[a] + size[a])).collect();
            let n: Vec<usize> = (0..nd).map(|a| hi[a] - lo[a]).collect();
            // The innermost axes that are whole in both chunk and region form one contiguous run.
            let mut j = nd - 1;
            while j > 0 && n[j] == self.chunks[j] && n[j] == size[j] {
                j -= 1;
            }
            let run = n[j..].iter().product::<usize>() * isz;
            let whole_chunk = (0..nd).all(|a| n[a] == self.chunks[a]);
            let outer = &n[..j];
            let nruns: usize = outer.iter().product();
            let src_off = |o: &[usize]| -> usize {
                (0..nd).map(|a| (lo[a] - origin[a] + o.get(a).copied().unwrap_or(0)) * cstride[a]).sum::<usize>() * isz
            };
            let dst_off = |o: &[usize]| -> usize {
                (0..nd).map(|a| (lo[a] - start[a] + o.get(a).copied().unwrap_or(0)) * rstride[a]).sum::<usize>() * isz
            };
            let mut o = vec![0usize; j];
            if whole_chunk && run < SMALL_RUN && nruns > 1 {
                // Runs lie back to back in the file: read many at once, then scatter.
                let per = (SCRATCH / run).max(1);
                let mut done = 0;
                while done < nruns {
                    let k = per.min(nruns - done);
                    scratch.resize(k * run, 0u8);
                    h.read_at((done * run) as u64, &mut scratch[..k * run])?;
                    for i in 0..k {
                        let d = dst_off(&o);
                        out[d..d + run].copy_from_slice(&scratch[i * run..(i + 1) * run]);
                        odometer(&mut o, outer);
                    }
                    done += k;
                }
            } else {
                loop {
                    let (s, d) = (src_off(&o), dst_off(&o));
                    h.read_at(s as u64, &mut out[d..d + run])?;
                    if !odometer(&mut o, outer) {
                        break;
                    }
                }
            }
            if !odometer(&mut rel, &span) {
                return Ok(());
            }
        }
    }
}

/// C-order element strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// Advances `idx` in C order within `bounds`; false when it wraps to all zeros.
fn odometer(idx: &mut [usize], bounds: &[usize]) -> bool {
    for a in (0..idx.len()).rev() {
        idx[a] += 1;
        if idx[a] < bounds[a] {
            return true;
        }
        idx[a] = 0;
    }
    false
}
