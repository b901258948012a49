//! Safe reads of a `TRITONBACKEND_Request`: its inputs copied out by index with dtype, shape and byte-size
//! checks (CPU memory only), the outputs it asks for, and its id.
#![allow(unsafe_code)]
use super::error::{check, read_cstr};
use super::ffi;
use super::tensors::{InputTensor, dtype_size};
use crate::{Error, Result};
use std::ffi::{c_char, c_void};
use std::ptr;

/// A request pointer Triton handed to `execute`; owned by us until released (see `response::TritonSink`).
#[derive(Clone, Copy)]
pub struct RequestPtr(pub *mut ffi::TRITONBACKEND_Request);

impl RequestPtr {
    /// Copies every input tensor out of the request.
    pub fn inputs(self) -> Result<Vec<InputTensor>> {
        let mut count = 0u32;
        // SAFETY: `self.0` is a live request owned by this backend; out-pointers are valid locals.
        check(unsafe { ffi::TRITONBACKEND_RequestInputCount(self.0, &mut count) }, "RequestInputCount")?;
        (0..count).map(|i| self.input(i)).collect()
    }

    fn input(self, index: u32) -> Result<InputTensor> {
        let mut input = ptr::null_mut();
        // SAFETY: as above; `index < count`.
        check(unsafe { ffi::TRITONBACKEND_RequestInputByIndex(self.0, index, &mut input) }, "RequestInputByIndex")?;
        let (mut name, mut dtype, mut shape, mut dims, mut byte_size, mut buffers) =
            (ptr::null(), 0u32, ptr::null(), 0u32, 0u64, 0u32);
        // SAFETY: `input` was just returned for this request; all out-pointers are valid.
        check(
            unsafe {
                ffi::TRITONBACKEND_InputProperties(
                    input,
                    &mut name,
                    &mut dtype,
                    &mut shape,
                    &mut dims,
                    &mut byte_size,
                    &mut buffers,
                )
            },
            "InputProperties",
        )?;
        // SAFETY: Triton keeps name and shape alive as long as the request.
        let name = unsafe { read_cstr(name) };
        let shape: Vec<i64> = if shape.is_null() || dims == 0 {
            Vec::new()
        } else {
            unsafe { std::slice::from_raw_parts(shape, dims as usize) }.to_vec()
        };
        let mut data = Vec::with_capacity(byte_size.min(1 << 30) as usize);
        for b in 0..buffers {
            let (mut base, mut size, mut mem, mut mem_id): (*const c_void, u64, u32, i64) =
                (ptr::null(), 0, ffi::MEMORY_CPU, 0);
            // SAFETY: `b < buffer_count`; out-pointers are valid; we ask for CPU memory.
            check(
                unsafe { ffi::TRITONBACKEND_InputBuffer(input, b, &mut base, &mut size, &mut mem, &mut mem_id) },
                "InputBuffer",
            )?;
            if mem == ffi::MEMORY_GPU {
                return Err(Error::InvalidRequest(format!(
                    "input `{name}` is in GPU memory; this backend reads host memory"
                )));
            }
            if size > 0 {
                if base.is_null() {
                    return Err(Error::Internal(format!("input `{name}`: null buffer of {size} bytes")));
                }
                // SAFETY: Triton guarantees `size` readable bytes at `base` until the request is released.
                data.extend_from_slice(unsafe { std::slice::from_raw_parts(base as *const u8, size as usize) });
            }
        }
        if data.len() as u64 != byte_size {
            return Err(Error::InvalidRequest(format!(
                "input `{name}`: buffers hold {} bytes, properties say {byte_size}",
                data.len()
            )));
        }
        let t = InputTensor { name, dtype, shape, data };
        if let Some(sz) = dtype_size(dtype) {
            let n = t.numel()?;
            if t.data.len() != n * sz {
                return Err(Error::InvalidRequest(format!(
                    "input `{}`: shape {:?} needs {} bytes, got {}",
                    t.name,
                    t.shape,
                    n * sz,
                    t.data.len()
                )));
            }
        }
        Ok(t)
    }

    /// Names of the outputs the client asked for (Triton lists all when the client names none).
    pub fn requested_outputs(self) -> Result<Vec<String>> {
        let mut count = 0u32;
        // SAFETY: live request; valid out-pointer.
        check(unsafe { ffi::TRITONBACKEND_RequestOutputCount(self.0, &mut count) }, "RequestOutputCount")?;
        let mut out = Vec::with_capacity(count as usize);
        for i in 0..count {
            let mut name: *const c_char = ptr::null();
            // SAFETY: `i < count`; the name lives as long as the request.
            check(unsafe { ffi::TRITONBACKEND_RequestOutputName(self.0, i, &mut name) }, "RequestOutputName")?;
            out.push(unsafe { read_cstr(name) });
        }
        Ok(out)
    }

    /// The client's request id ("" when none).
    pub fn id(self) -> String {
        let mut id: *const c_char = ptr::null();
        // SAFETY: live request; the id lives as long as the request.
        match check(unsafe { ffi::TRITONBACKEND_RequestId(self.0, &mut id) }, "RequestId") {
            Ok(()) => unsafe { read_cstr(id) },
            Err(_) => String::new(),
        }
    }
}
