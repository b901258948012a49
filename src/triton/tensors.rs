//! Request tensors as plain data, copied out of Triton: dtype names, BYTES element framing (4-byte little-endian
//! length prefixes, validated against the buffer) and typed per-row reads. No FFI here, so it is unit-tested.
use super::ffi;
use crate::{Error, Result};

/// One input tensor of one request, its bytes copied into host memory.
#[derive(Debug, Clone, PartialEq)]
pub struct InputTensor {
    pub name: String,
    /// A `TRITONSERVER_DataType` value (`ffi::TYPE_*`).
    pub dtype: u32,
    pub shape: Vec<i64>,
    pub data: Vec<u8>,
}

/// Triton's name for a datatype, for error messages.
pub fn dtype_name(t: u32) -> &'static str {
    match t {
        ffi::TYPE_BOOL => "BOOL",
        ffi::TYPE_UINT8 => "UINT8",
        ffi::TYPE_UINT16 => "UINT16",
        ffi::TYPE_UINT32 => "UINT32",
        ffi::TYPE_UINT64 => "UINT64",
        ffi::TYPE_INT8 => "INT8",
        ffi::TYPE_INT16 => "INT16",
        ffi::TYPE_INT32 => "INT32",
        ffi::TYPE_INT64 => "INT64",
        ffi::TYPE_FP16 => "FP16",
        ffi::TYPE_FP32 => "FP32",
        ffi::TYPE_FP64 => "FP64",
        ffi::TYPE_BYTES => "BYTES",
        ffi::TYPE_BF16 => "BF16",
        _ => "INVALID",
    }
}

/// Size of one element, `None` for BYTES.
pub fn dtype_size(t: u32) -> Option<usize> {
    Some(match t {
        ffi::TYPE_BOOL | ffi::TYPE_UINT8 | ffi::TYPE_INT8 => 1,
        ffi::TYPE_UINT16 | ffi::TYPE_INT16 | ffi::TYPE_FP16 | ffi::TYPE_BF16 => 2,
        ffi::TYPE_UINT32 | ffi::TYPE_INT32 | ffi::TYPE_FP32 => 4,
        ffi::TYPE_UINT64 | ffi::TYPE_INT64 | ffi::TYPE_FP64 => 8,
        _ => return None,
    })
}

fn bad(m: String) -> Error {
    Error::InvalidRequest(m)
}

/// Splits a BYTES buffer into its elements. Each element is a u32 LE length then that many bytes; a length
/// that runs past the end, a truncated prefix, or a count other than `expected` is an error, never a panic.
pub fn parse_bytes(name: &str, buf: &[u8], expected: usize) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::with_capacity(expected.min(1 << 16));
    let mut at = 0usize;
    while at < buf.len() {
        let Some(prefix) = buf.get(at..at + 4) else {
            return Err(bad(format!(
                "input `{name}`: BYTES element {} has a truncated 4-byte length prefix",
                out.len()
            )));
        };
        let n = u32::from_le_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        at += 4;
        let Some(body) = at.checked_add(n).and_then(|end| buf.get(at..end)) else {
            return Err(bad(format!(
                "input `{name}`: BYTES element {} claims {n} bytes but only {} remain",
                out.len(),
                buf.len() - at
            )));
        };
        out.push(body.to_vec());
        at += n;
    }
    if out.len() != expected {
        return Err(bad(format!(
            "input `{name}`: shape says {expected} BYTES elements, the buffer holds {}",
            out.len()
        )));
    }
    Ok(out)
}

/// Frames strings as a BYTES buffer.
pub fn encode_bytes<S: AsRef<[u8]>>(items: &[S]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in items {
        let s = s.as_ref();
        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        out.extend_from_slice(s);
    }
    out
}

impl InputTensor {
    /// Number of elements the shape describes (negative dims are an error).
    pub fn numel(&self) -> Result<usize> {
        let mut n = 1usize;
        for &d in &self.shape {
            if d < 0 {
                return Err(bad(format!("input `{}`: negative dimension in shape {:?}", self.name, self.shape)));
            }
            n = n
                .checked_mul(d as usize)
                .ok_or_else(|| bad(format!("input `{}`: shape {:?} overflows", self.name, self.shape)))?;
        }
        Ok(n)
    }

    /// Rows along the batch dimension: `shape[0]`, elements per row: the product of the rest.
    pub fn rows(&self) -> Result<(usize, usize)> {
        if self.shape.is_empty() {
            return Err(bad(format!("input `{}`: a batch dimension is required, got a scalar", self.name)));
        }
        let n = self.numel()?;
        let r = self.shape[0] as usize;
        Ok((r, n.checked_div(r).unwrap_or(0)))
    }

    fn check_fixed(&self) -> Result<usize> {
        let n = self.numel()?;
        let size = dtype_size(self.dtype)
            .ok_or_else(|| bad(format!("input `{}`: BYTES where a number was expected", self.name)))?;
        // `n * size` may overflow for a hostile shape; wrapped, it could match a short buffer.
        if n.checked_mul(size) != Some(self.data.len()) {
            return Err(bad(format!(
                "input `{}`: {} bytes for {n} {} elements",
                self.name,
                self.data.len(),
                dtype_name(self.dtype)
            )));
        }
        Ok(size)
    }

    /// Every element as f64 (integers, floats, bools).
    pub fn as_f64s(&self) -> Result<Vec<f64>> {
        let size = self.check_fixed()?;
        let d = &self.data;
        let v = d.chunks_exact(size).map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            match self.dtype {
                ffi::TYPE_BOOL | ffi::TYPE_UINT8 => c[0] as f64,
                ffi::TYPE_INT8 => c[0] as i8 as f64,
                ffi::TYPE_UINT16 => u16::from_le_bytes([c[0], c[1]]) as f64,
                ffi::TYPE_INT16 => i16::from_le_bytes([c[0], c[1]]) as f64,
                ffi::TYPE_UINT32 => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                ffi::TYPE_INT32 => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                ffi::TYPE_FP32 => f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64,
                ffi::TYPE_UINT64 => u64::from_le_bytes(b) as f64,
                ffi::TYPE_INT64 => i64::from_le_bytes(b) as f64,
                ffi::TYPE_FP64 => f64::from_le_bytes(b),
                ffi::TYPE_FP16 => half::f16::from_le_bytes([c[0], c[1]]).to_f64(),
                _ => half::bf16::from_le_bytes([c[0], c[1]]).to_f64(),
            }
        });
        Ok(v.collect())
    }

    /// Every element as i128 (exact for all integer types; floats must be whole numbers).
    pub fn as_ints(&self) -> Result<Vec<i128>> {
        let size = self.check_fixed()?;
        if matches!(self.dtype, ffi::TYPE_UINT64 | ffi::TYPE_INT64) {
            return Ok(self
                .data
                .chunks_exact(size)
                .map(|c| {
                    let b: [u8; 8] = c.try_into().unwrap_or([0; 8]);
                    if self.dtype == ffi::TYPE_UINT64 {
                        u64::from_le_bytes(b) as i128
                    } else {
                        i64::from_le_bytes(b) as i128
                    }
                })
                .collect());
        }
        self.as_f64s()?
            .into_iter()
            .map(|x| {
                if x.fract() == 0.0 && x.is_finite() {
                    Ok(x as i128)
                } else {
                    Err(bad(format!("input `{}`: {x} is not an integer", self.name)))
                }
            })
            .collect()
    }

    /// BYTES elements.
    pub fn as_bytes(&self) -> Result<Vec<Vec<u8>>> {
        if self.dtype != ffi::TYPE_BYTES {
            return Err(bad(format!("input `{}` must be BYTES, got {}", self.name, dtype_name(self.dtype))));
        }
        parse_bytes(&self.name, &self.data, self.numel()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, dtype: u32, shape: &[i64], data: Vec<u8>) -> InputTensor {
        InputTensor { name: name.into(), dtype, shape: shape.to_vec(), data }
    }

    #[test]
    fn bytes_roundtrip_and_empty_elements() {
        let buf = encode_bytes(&["hello", "", "wörld"]);
        assert_eq!(parse_bytes("p", &buf, 3).unwrap(), vec![b"hello".to_vec(), vec![], "wörld".as_bytes().to_vec()]);
    }

    #[test]
    fn lying_lengths_are_errors() {
        let mut buf = encode_bytes(&["hi"]);
        buf[0] = 200;
        assert!(parse_bytes("p", &buf, 1).unwrap_err().to_string().contains("claims 200 bytes"));
        let huge = [0xff, 0xff, 0xff, 0xff, b'a'];
        assert!(parse_bytes("p", &huge, 1).is_err());
        assert!(parse_bytes("p", &[1, 0], 1).unwrap_err().to_string().contains("truncated"));
        assert!(parse_bytes("p", &encode_bytes(&["a", "b"]), 1).unwrap_err().to_string().contains("holds 2"));
        assert!(parse_bytes("p", &[], 1).is_err());
    }

    #[test]
    fn byte_size_of_a_huge_shape_does_not_wrap() {
        // fuzz/regressions/triton_request: 2^62 FP32 elements are 2^64 bytes, which wrapped to 0 and matched an
        // empty buffer (an overflow panic with checks on; in release, an empty row list indexed by batch row).
        let x = t("top_p", ffi::TYPE_FP32, &[1 << 62, 1], vec![]);
        assert!(x.as_f64s().is_err());
        assert!(x.as_ints().is_err());
    }

    #[test]
    fn typed_reads() {
        let x = t("k", ffi::TYPE_INT64, &[2, 1], [(-1i64).to_le_bytes(), 7i64.to_le_bytes()].concat());
        assert_eq!(x.as_ints().unwrap(), vec![-1, 7]);
        let f = t("p", ffi::TYPE_FP32, &[1, 1], 0.5f32.to_le_bytes().to_vec());
        assert_eq!(f.as_f64s().unwrap(), vec![0.5]);
        let short = t("p", ffi::TYPE_FP32, &[2, 1], 0.5f32.to_le_bytes().to_vec());
        assert!(short.as_f64s().is_err());
        let u = t("s", ffi::TYPE_UINT64, &[1, 1], u64::MAX.to_le_bytes().to_vec());
        assert_eq!(u.as_ints().unwrap(), vec![u64::MAX as i128]);
        assert!(t("s", ffi::TYPE_FP32, &[1], 0.5f32.to_le_bytes().to_vec()).as_ints().is_err());
        assert!(f.as_bytes().unwrap_err().to_string().contains("must be BYTES, got FP32"));
        assert!(t("p", ffi::TYPE_BYTES, &[-1], vec![]).numel().is_err());
    }
}
