//! Block layouts of the quantized GGML types, byte for byte as `ggml-common.h` declares them.
//!
//! Every struct is `#[repr(C)]`, has no padding and derives [`bytemuck::Pod`], so a slice of
//! suitably aligned bytes from a GGUF file can be viewed as a slice of blocks with
//! [`bytemuck::try_cast_slice`], and a single block can be read from unaligned bytes with
//! [`bytemuck::pod_read_unaligned`]. Multi-byte fields are in the host's byte order, which is the
//! file's (little-endian) order on every target this runtime supports.
//!
//! Naming: `d` is always a scale that multiplies quantized values, `m`/`dmin` a value (or scale of
//! values) that is added/subtracted, `qs` the low bits of the quants, `qh`/`hmask` their high bits.
//! "Sub-block" means the 16 or 32 consecutive values that share one 6- or 8-bit scale inside a
//! 256-value K-quant super-block.

use bytemuck::{Pod, Zeroable};
use half::f16;

use crate::GgmlType;

/// Values per block of the 32-wide "legacy" formats (`QK4_0`, `QK4_1`, `QK5_0`, `QK5_1`, `QK8_0`,
/// `QK8_1` in ggml: all equal).
pub const QK: usize = 32;
/// Values per K-quant super-block (`QK_K`).
pub const QK_K: usize = 256;
/// Bytes of packed 6-bit scales and mins in Q4_K/Q5_K (`K_SCALE_SIZE`).
pub const K_SCALE_SIZE: usize = 12;

/// A quantized block type: ties the layout to its [`GgmlType`].
pub trait QuantBlock: Pod {
    /// The element type these blocks encode.
    const TYPE: GgmlType;
    /// Values encoded by one block.
    const BLOCK_LEN: usize;
}

/// `block_q4_0`: 32 values `x[i] = d * (q[i] - 8)` with 4-bit `q`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Quants: byte `j` holds value `j` in its low nibble and value `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}

/// `block_q4_1`: 32 values `x[i] = d * q[i] + m` with 4-bit `q`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum), added after scaling.
    pub m: f16,
    /// Quants: byte `j` holds value `j` in its low nibble and value `j + 16` in its high nibble.
    pub qs: [u8; QK / 2],
}

/// `block_q5_0`: 32 values `x[i] = d * (q[i] - 16)` with 5-bit `q`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits: bit `i` of this little-endian `u32` is bit 4 of value `i`.
    pub qh: [u8; 4],
    /// Low four bits: byte `j` holds value `j` (low nibble) and value `j + 16` (high nibble).
    pub qs: [u8; QK / 2],
}

/// `block_q5_1`: 32 values `x[i] = d * q[i] + m` with 5-bit `q`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Pod, Zeroable)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Offset (the block minimum), added after scaling.
    pub m: f16,
    /// Fifth bits: bit `i` of this little-endian `u32` is bit 4 of value `i`.
    pub qh: [u8; 4],
    /// Low four bits: byte `j` holds value `j` (low nibble) and value `j + 16` (high nibble).
    pub qs: [u8; QK / 2],
}

/// `block_q8_0`: 32 values `x[i] = d * qs[i]`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Signed quants, in order.
    pub qs: [i8; QK],
}

/// `block_q8_1`: 32 values `x[i] = d * qs[i]`, plus the precomputed `s = d * sum(qs)` that dot
/// products against Q4_1/Q5_1 weights use for the offset term.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * sum(qs)`, rounded to f16.
    pub s: f16,
    /// Signed quants, in order.
    pub qs: [i8; QK],
}

/// `block_q2_K`: 256 values in 16 sub-blocks of 16,
/// `x = d * (scales[s] & 0xF) * q - dmin * (scales[s] >> 4)` with 2-bit `q`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ2K {
    /// Per sub-block: 4-bit scale in the low nibble, 4-bit min in the high nibble.
    pub scales: [u8; QK_K / 16],
    /// Quants, 2 bits each. Per 128-value half `h`, byte `l` (0..32) holds values
    /// `h*128 + l + 32*k` at bits `2k..2k+2`, `k` = 0..4.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale for the sub-block scales.
    pub d: f16,
    /// Super-block scale for the sub-block mins.
    pub dmin: f16,
}

/// `block_q3_K`: 256 values in 16 sub-blocks of 16, `x = d * (scale[s] - 32) * (q - 4)` with
/// 3-bit `q` (2 low bits in `qs`, the high bit in `hmask`) and 6-bit `scale`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ3K {
    /// High quant bits: bit `b` of byte `l` (0..32) belongs to value `32*b + l`. A set bit means
    /// `q` is taken as is, a clear bit subtracts 4.
    pub hmask: [u8; QK_K / 8],
    /// Low 2 quant bits, laid out like [`BlockQ2K::qs`].
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales (biased by 32): bytes 0..8 hold the low nibbles of scales 0..8 (low
    /// nibble) and 8..16 (high nibble); bytes 8..12 hold the top 2 bits, scale `j` at byte
    /// `8 + j % 4`, bits `2*(j/4)..2*(j/4)+2`.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

/// `block_q4_K`: 256 values in 8 sub-blocks of 32, `x = d * sc[s] * q - dmin * m[s]` with 4-bit
/// `q` and 6-bit `sc`, `m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ4K {
    /// Super-block scale for the sub-block scales.
    pub d: f16,
    /// Super-block scale for the sub-block mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed as [`get_scale_min_k4`] unpacks them.
    pub scales: [u8; K_SCALE_SIZE],
    /// Quants: per 64-value chunk `c`, byte `l` (0..32) holds value `64c + l` (low nibble) and
    /// `64c + 32 + l` (high nibble).
    pub qs: [u8; QK_K / 2],
}

/// `block_q5_K`: 256 values in 8 sub-blocks of 32, `x = d * sc[s] * q - dmin * m[s]` with 5-bit
/// `q` and 6-bit `sc`, `m`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ5K {
    /// Super-block scale for the sub-block scales.
    pub d: f16,
    /// Super-block scale for the sub-block mins.
    pub dmin: f16,
    /// Scales and mins, packed as in [`BlockQ4K::scales`].
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth quant bits: bit `b` of byte `l` (0..32) belongs to value `32*b + l`.
    pub qh: [u8; QK_K / 8],
    /// Low four quant bits, laid out like [`BlockQ4K::qs`].
    pub qs: [u8; QK_K / 2],
}

/// `block_q6_K`: 256 values in 16 sub-blocks of 16, `x = d * scales[s] * (q - 32)` with 6-bit `q`
/// and 8-bit signed `scales`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ6K {
    /// Low four quant bits. Per 128-value half `h`, byte `l` (0..64) holds value `128h + l` in its
    /// low nibble and `128h + 64 + l` in its high nibble.
    pub ql: [u8; QK_K / 2],
    /// High two quant bits. Per half `h`, byte `l` (0..32) holds values `128h + l + 32k` at bits
    /// `2k..2k+2`, `k` = 0..4.
    pub qh: [u8; QK_K / 4],
    /// Signed scale per 16-value sub-block.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

/// `block_q8_K`: 256 values `x[i] = d * qs[i]`, the activation format K-quant dot products use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Pod, Zeroable)]
pub struct BlockQ8K {
    /// Scale (a full f32, unlike the other formats).
    pub d: f32,
    /// Signed quants, in order.
    pub qs: [i8; QK_K],
    /// Sum of each 16 consecutive quants.
    pub bsums: [i16; QK_K / 16],
}

macro_rules! quant_blocks {
    ($($block:ident: $ty:ident, $len:expr, $bytes:literal;)*) => {
        $(
            impl QuantBlock for $block {
                const TYPE: GgmlType = GgmlType::$ty;
                const BLOCK_LEN: usize = $len;
            }
            // Layout check against ggml's `sizeof(block_*)` (also equal to `GgmlType::block_bytes`,
            // which the unit test `block_sizes_match_ggml_type` checks as that fn is not const).
            const _: () = assert!(std::mem::size_of::<$block>() == $bytes);
        )*

        /// `(type, size_of block, elements per block)` for every block struct, for tests.
        #[cfg(test)]
        pub(crate) const LAYOUTS: &[(GgmlType, usize, usize)] = &[
            $((GgmlType::$ty, std::mem::size_of::<$block>(), $len),)*
        ];
    };
}

quant_blocks! {
    BlockQ4_0: Q4_0, QK, 18;
    BlockQ4_1: Q4_1, QK, 20;
    BlockQ5_0: Q5_0, QK, 22;
    BlockQ5_1: Q5_1, QK, 24;
    BlockQ8_0: Q8_0, QK, 34;
    BlockQ8_1: Q8_1, QK, 36;
    BlockQ2K: Q2_K, QK_K, 84;
    BlockQ3K: Q3_K, QK_K, 110;
    BlockQ4K: Q4_K, QK_K, 144;
    BlockQ5K: Q5_K, QK_K, 176;
    BlockQ6K: Q6_K, QK_K, 210;
    BlockQ8K: Q8_K, QK_K, 292;
}

impl Default for BlockQ8_0 {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl Default for BlockQ8_1 {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl Default for BlockQ8K {
    fn default() -> Self {
        Self::zeroed()
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K/Q5_K (ggml's
/// `get_scale_min_k4`).
///
/// Bytes 0..4 hold scales 0..4 in their low 6 bits, bytes 4..8 mins 0..4 likewise; bytes 8..12
/// hold the low nibbles of scale 4..8 (low nibble) and min 4..8 (high nibble), whose top two bits
/// sit in the spare top bits of bytes 0..4 (scales) and 4..8 (mins).
#[inline(always)]
pub fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The sixteen 6-bit scales of a Q3_K block, still biased by 32 (ggml's `kmask` unpacking).
#[inline(always)]
pub fn unpack_q3_k_scales(packed: &[u8; 12]) -> [u8; 16] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let word = |i: usize| {
        u32::from_le_bytes([
            packed[4 * i],
            packed[4 * i + 1],
            packed[4 * i + 2],
            packed[4 * i + 3],
        ])
    };
    let (a0, a1, tmp) = (word(0), word(1), word(2));
    let aux = [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ];
    let mut out = [0u8; 16];
    for (o, a) in out.chunks_exact_mut(4).zip(aux) {
        o.copy_from_slice(&a.to_le_bytes());
    }
    out
}
