//! Host tensors in their stored dtype (f32, f16 or bf16), row-major, with the slicing tensor parallelism needs.
use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
        }
    }
}

/// Element storage; weights stay in their checkpoint dtype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// A zeroed tensor whose bytes can be filled in place (see `bytes_mut`): no second copy is needed.
    pub fn zeros(dtype: DType, shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        let data = match dtype {
            DType::F32 => TensorData::F32(vec![0.0; n]),
            DType::F16 => TensorData::F16(vec![f16::ZERO; n]),
            DType::BF16 => TensorData::BF16(vec![bf16::ZERO; n]),
        };
        Tensor { shape: shape.to_vec(), data }
    }

    pub fn from_f32(shape: &[usize], v: Vec<f32>) -> Tensor {
        assert_eq!(shape.iter().product::<usize>(), v.len());
        Tensor { shape: shape.to_vec(), data: TensorData::F32(v) }
    }

    pub fn dtype(&self) -> DType {
        match &self.data {
            TensorData::F32(_) => DType::F32,
            TensorData::F16(_) => DType::F16,
            TensorData::BF16(_) => DType::BF16,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn nbytes(&self) -> usize {
        self.numel() * self.dtype().size()
    }

    /// The raw little-endian bytes, for filling from a file.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        match &mut self.data {
            TensorData::F32(v) => bytemuck::cast_slice_mut(v),
            TensorData::F16(v) => bytemuck::cast_slice_mut(v),
            TensorData::BF16(v) => bytemuck::cast_slice_mut(v),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.data {
            TensorData::F32(v) => bytemuck::cast_slice(v),
            TensorData::F16(v) => bytemuck::cast_slice(v),
            TensorData::BF16(v) => bytemuck::cast_slice(v),
        }
    }

    /// Element i as f32.
    pub fn get_f32(&self, i: usize) -> f32 {
        match &self.data {
            TensorData::F32(v) => v[i],
            TensorData::F16(v) => v[i].to_f32(),
            TensorData::BF16(v) => v[i].to_f32(),
        }
    }

    /// All elements as f32 (for norms and tests; never used on large matrices in the hot path).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        (0..self.numel()).map(|i| self.get_f32(i)).collect()
    }

    /// The same tensor in bf16 (round to nearest even); a bf16 tensor is returned as it is.
    pub fn to_bf16(self) -> Tensor {
        let data = match self.data {
            TensorData::BF16(v) => TensorData::BF16(v),
            TensorData::F32(v) => TensorData::BF16(v.into_iter().map(bf16::from_f32).collect()),
            TensorData::F16(v) => TensorData::BF16(v.into_iter().map(|x| bf16::from_f32(x.to_f32())).collect()),
        };
        Tensor { shape: self.shape, data }
    }

    /// Rows [start, end) of a matrix viewed as [shape[0], rest].
    pub fn slice_rows(&self, start: usize, end: usize) -> Tensor {
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        let r = start * row..end * row;
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(v[r].to_vec()),
            TensorData::F16(v) => TensorData::F16(v[r].to_vec()),
            TensorData::BF16(v) => TensorData::BF16(v[r].to_vec()),
        };
        Tensor { shape, data }
    }

    /// Columns [start, end) of a 2-D matrix.
    pub fn slice_cols(&self, start: usize, end: usize) -> Tensor {
        assert_eq!(self.shape.len(), 2);
        let (rows, cols) = (self.shape[0], self.shape[1]);
        fn pick<T: Copy>(v: &[T], rows: usize, cols: usize, s: usize, e: usize) -> Vec<T> {
            let mut out = Vec::with_capacity(rows * (e - s));
            for r in 0..rows {
                out.extend_from_slice(&v[r * cols + s..r * cols + e]);
            }
            out
        }
        let data = match &self.data {
            TensorData::F32(v) => TensorData::F32(pick(v, rows, cols, start, end)),
            TensorData::F16(v) => TensorData::F16(pick(v, rows, cols, start, end)),
            TensorData::BF16(v) => TensorData::BF16(pick(v, rows, cols, start, end)),
        };
        Tensor { shape: vec![rows, end - start], data }
    }

    /// Stacks matrices with equal trailing shape along rows.
    pub fn concat_rows(parts: &[Tensor]) -> Tensor {
        let first = &parts[0];
        let mut shape = first.shape.clone();
        shape[0] = parts.iter().map(|p| p.shape[0]).sum();
        let mut out = Tensor::zeros(first.dtype(), &shape);
        let mut off = 0;
        let dst = out.bytes_mut();
        for p in parts {
            assert_eq!(p.dtype(), first.dtype());
            assert_eq!(p.shape[1..], first.shape[1..]);
            let b = p.bytes();
            dst[off..off + b.len()].copy_from_slice(b);
            off += b.len();
        }
        out
    }
}
