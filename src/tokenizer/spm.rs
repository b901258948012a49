//! Minimal, panic-free reader for SentencePiece `.model` files (the protobuf `ModelProto`).
//!
//! Only the fields the engine needs are decoded; everything else is skipped by wire type. Field numbers are
//! from `sentencepiece_model.proto` (checked against the descriptor shipped in the `sentencepiece` 0.2 wheel):
//! `ModelProto { 1: repeated SentencePiece pieces, 2: TrainerSpec, 3: NormalizerSpec, 5: denormalizer }`,
//! `SentencePiece { 1: piece, 2: score (float), 3: type }`.

/// `SentencePiece.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
    /// A value this reader does not know.
    Other(i32),
}

impl PieceType {
    fn from_i32(v: i32) -> PieceType {
        match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            other => PieceType::Other(other),
        }
    }
}

/// One vocabulary entry; its id is its index in [`ModelProto::pieces`].
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// `TrainerSpec.ModelType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelType {
    Unigram,
    Bpe,
    Word,
    Char,
    Other(i32),
}

/// The `TrainerSpec` fields that change how text is encoded or decoded (proto2 defaults applied).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainerSpec {
    /// Field 3; default UNIGRAM.
    pub model_type: ModelType,
    /// Field 4; default 8000.
    pub vocab_size: i32,
    /// Field 24.
    pub treat_whitespace_as_suffix: bool,
    /// Field 35.
    pub byte_fallback: bool,
    /// Fields 40..43; defaults 0, 1, 2, -1.
    pub unk_id: i32,
    pub bos_id: i32,
    pub eos_id: i32,
    pub pad_id: i32,
    /// Field 44: what `<unk>` decodes to; default " ⁇ ".
    pub unk_surface: String,
}

impl Default for TrainerSpec {
    fn default() -> Self {
        TrainerSpec {
            model_type: ModelType::Unigram,
            vocab_size: 8000,
            treat_whitespace_as_suffix: false,
            byte_fallback: false,
            unk_id: 0,
            bos_id: 1,
            eos_id: 2,
            pad_id: -1,
            unk_surface: " \u{2047} ".to_string(),
        }
    }
}

/// The `NormalizerSpec` fields (proto2 defaults applied).
#[derive(Debug, Clone, PartialEq)]
pub struct NormalizerSpec {
    /// Field 1, e.g. `identity` or `nmt_nfkc`.
    pub name: String,
    /// Length of field 2 (`precompiled_charsmap`); non-zero means a real normalization table.
    pub charsmap_len: usize,
    /// Field 3; default true.
    pub add_dummy_prefix: bool,
    /// Field 4; default true.
    pub remove_extra_whitespaces: bool,
    /// Field 5; default true.
    pub escape_whitespaces: bool,
}

impl Default for NormalizerSpec {
    fn default() -> Self {
        NormalizerSpec {
            name: String::new(),
            charsmap_len: 0,
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            escape_whitespaces: true,
        }
    }
}

/// The decoded parts of a `.model` file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ModelProto {
    pub pieces: Vec<Piece>,
    pub trainer: TrainerSpec,
    pub normalizer: NormalizerSpec,
    /// Length of the denormalizer's `precompiled_charsmap`; non-zero means decoding rewrites text.
    pub denormalizer_charsmap_len: usize,
}

/// Wire-level errors are plain messages; the caller wraps them with the file name.
pub type ParseResult<T> = std::result::Result<T, String>;

/// Parses a serialized `ModelProto`.
pub fn parse(bytes: &[u8]) -> ParseResult<ModelProto> {
    let mut model = ModelProto::default();
    let mut r = Reader::new(bytes);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, WIRE_LEN) => model.pieces.push(parse_piece(r.bytes()?)?),
            (2, WIRE_LEN) => model.trainer = parse_trainer(r.bytes()?)?,
            (3, WIRE_LEN) => model.normalizer = parse_normalizer(r.bytes()?)?,
            (5, WIRE_LEN) => model.denormalizer_charsmap_len = parse_normalizer(r.bytes()?)?.charsmap_len,
            (1..=3 | 5, _) => return Err(format!("ModelProto field {field} has wire type {wire}, expected 2")),
            _ => r.skip(wire)?,
        }
    }
    Ok(model)
}

fn parse_piece(bytes: &[u8]) -> ParseResult<Piece> {
    let mut p = Piece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
    let mut r = Reader::new(bytes);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, WIRE_LEN) => p.piece = r.string()?,
            (2, WIRE_FIXED32) => p.score = f32::from_bits(r.fixed32()?),
            (3, WIRE_VARINT) => p.kind = PieceType::from_i32(r.int32()?),
            (1..=3, _) => return Err(format!("SentencePiece field {field} has unexpected wire type {wire}")),
            _ => r.skip(wire)?,
        }
    }
    Ok(p)
}

fn parse_trainer(bytes: &[u8]) -> ParseResult<TrainerSpec> {
    let mut t = TrainerSpec::default();
    let mut r = Reader::new(bytes);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (3, WIRE_VARINT) => {
                t.model_type = match r.int32()? {
                    1 => ModelType::Unigram,
                    2 => ModelType::Bpe,
                    3 => ModelType::Word,
                    4 => ModelType::Char,
                    other => ModelType::Other(other),
                }
            }
            (4, WIRE_VARINT) => t.vocab_size = r.int32()?,
            (24, WIRE_VARINT) => t.treat_whitespace_as_suffix = r.varint()? != 0,
            (35, WIRE_VARINT) => t.byte_fallback = r.varint()? != 0,
            (40, WIRE_VARINT) => t.unk_id = r.int32()?,
            (41, WIRE_VARINT) => t.bos_id = r.int32()?,
            (42, WIRE_VARINT) => t.eos_id = r.int32()?,
            (43, WIRE_VARINT) => t.pad_id = r.int32()?,
            (44, WIRE_LEN) => t.unk_surface = r.string()?,
            (3 | 4 | 24 | 35 | 40..=44, _) => {
                return Err(format!("TrainerSpec field {field} has unexpected wire type {wire}"));
            }
            _ => r.skip(wire)?,
        }
    }
    Ok(t)
}

fn parse_normalizer(bytes: &[u8]) -> ParseResult<NormalizerSpec> {
    let mut n = NormalizerSpec::default();
    let mut r = Reader::new(bytes);
    while let Some((field, wire)) = r.tag()? {
        match (field, wire) {
            (1, WIRE_LEN) => n.name = r.string()?,
            (2, WIRE_LEN) => n.charsmap_len = r.bytes()?.len(),
            (3, WIRE_VARINT) => n.add_dummy_prefix = r.varint()? != 0,
            (4, WIRE_VARINT) => n.remove_extra_whitespaces = r.varint()? != 0,
            (5, WIRE_VARINT) => n.escape_whitespaces = r.varint()? != 0,
            (1..=5, _) => return Err(format!("NormalizerSpec field {field} has unexpected wire type {wire}")),
            _ => r.skip(wire)?,
        }
    }
    Ok(n)
}

const WIRE_VARINT: u8 = 0;
const WIRE_FIXED64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_FIXED32: u8 = 5;

/// A bounds-checked cursor over protobuf wire data.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    fn varint(&mut self) -> ParseResult<u64> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(format!("truncated varint at byte {}", self.pos));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(format!("varint longer than 10 bytes ending at byte {}", self.pos))
    }

    /// An `int32` (negative values are sign-extended to 10-byte varints); enums are read the same way.
    fn int32(&mut self) -> ParseResult<i32> {
        Ok(self.varint()? as i64 as i32)
    }

    /// Next field number and wire type, or `None` at the end of the message.
    fn tag(&mut self) -> ParseResult<Option<(u32, u8)>> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let field = key >> 3;
        if field == 0 || field > u64::from(u32::MAX >> 3) {
            return Err(format!("invalid field number {field}"));
        }
        Ok(Some((field as u32, (key & 7) as u8)))
    }

    fn take(&mut self, n: u64) -> ParseResult<&'a [u8]> {
        let remaining = self.buf.len() - self.pos;
        if n > remaining as u64 {
            return Err(format!("field of {n} bytes at byte {} overruns the {remaining} bytes left", self.pos));
        }
        let out = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(out)
    }

    fn bytes(&mut self) -> ParseResult<&'a [u8]> {
        let n = self.varint()?;
        self.take(n)
    }

    fn string(&mut self) -> ParseResult<String> {
        let at = self.pos;
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("string at byte {at} is not valid UTF-8"))
    }

    fn fixed32(&mut self) -> ParseResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn skip(&mut self, wire: u8) -> ParseResult<()> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_FIXED64 => self.take(8).map(|_| ()),
            WIRE_LEN => self.bytes().map(|_| ()),
            WIRE_FIXED32 => self.take(4).map(|_| ()),
            other => Err(format!("unsupported wire type {other} at byte {}", self.pos)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn len_field(field: u64, body: &[u8], out: &mut Vec<u8>) {
        varint(field << 3 | 2, out);
        varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn piece(s: &str, score: f32, kind: u64) -> Vec<u8> {
        let mut b = Vec::new();
        len_field(1, s.as_bytes(), &mut b);
        b.push(2 << 3 | 5);
        b.extend_from_slice(&score.to_le_bytes());
        varint(3 << 3, &mut b);
        varint(kind, &mut b);
        b
    }

    #[test]
    fn parses_pieces_specs_and_defaults() {
        let mut m = Vec::new();
        len_field(1, &piece("<unk>", 0.0, 2), &mut m);
        len_field(1, &piece("\u{2581}t", -1.5, 1), &mut m);
        let mut t = Vec::new();
        varint(3 << 3, &mut t);
        varint(2, &mut t); // BPE
        varint(35 << 3, &mut t);
        varint(1, &mut t);
        varint(43 << 3, &mut t);
        varint(-1i64 as u64, &mut t); // pad_id = -1 as a 10-byte varint
        varint(7 << 3 | 2, &mut t); // an unknown string field is skipped
        varint(3, &mut t);
        t.extend_from_slice(b"abc");
        len_field(2, &t, &mut m);
        let mut n = Vec::new();
        len_field(1, b"identity", &mut n);
        varint(4 << 3, &mut n);
        varint(0, &mut n);
        len_field(3, &n, &mut m);
        let p = parse(&m).unwrap();
        assert_eq!(p.pieces.len(), 2);
        assert_eq!(p.pieces[0], Piece { piece: "<unk>".into(), score: 0.0, kind: PieceType::Unknown });
        assert_eq!(p.pieces[1].piece, "\u{2581}t");
        assert_eq!(p.pieces[1].score, -1.5);
        assert_eq!(p.trainer.model_type, ModelType::Bpe);
        assert!(p.trainer.byte_fallback);
        assert_eq!((p.trainer.unk_id, p.trainer.bos_id, p.trainer.eos_id, p.trainer.pad_id), (0, 1, 2, -1));
        assert_eq!(p.normalizer.name, "identity");
        assert!(p.normalizer.add_dummy_prefix && !p.normalizer.remove_extra_whitespaces);
        assert!(p.normalizer.escape_whitespaces);
    }

    #[test]
    fn empty_input_is_an_empty_model() {
        let p = parse(&[]).unwrap();
        assert!(p.pieces.is_empty());
        assert_eq!(p.trainer.model_type, ModelType::Unigram);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        // Truncated varint, overlong varint, huge length, bad UTF-8, group wire type, field 0, short fixed32.
        let cases: Vec<Vec<u8>> = vec![
            vec![0x0a],
            vec![0x80; 11],
            vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            {
                let mut m = Vec::new();
                len_field(1, &[0x0a, 0x02, 0xff, 0xfe], &mut m);
                m
            },
            vec![0x0b],
            vec![0x00, 0x00],
            {
                let mut m = Vec::new();
                len_field(1, &[0x15, 0x00, 0x00], &mut m);
                m
            },
            vec![0x08, 0x01], // ModelProto.pieces as a varint
        ];
        for (i, c) in cases.iter().enumerate() {
            assert!(parse(c).is_err(), "case {i} should fail: {c:?}");
        }
    }
}
