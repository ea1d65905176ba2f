//! Weights of the legacy types re-laid once, at load, for the packed kernels.
//!
//! A SIMD dot product of one row leaves eight (or sixteen) partial sums per block in the lanes of
//! a vector, which must be summed and scaled; per block that costs more instructions than the
//! products themselves. The packed layout interleaves [`PACK_ROWS`] rows instead, four quant
//! bytes of each in turn, so that one 32-byte vector holds the same four values of every row.
//! Multiplied with a token's four matching activations broadcast to all lanes, each i32 lane
//! accumulates a different row: a block takes eight byte products and a few float operations for
//! eight rows, with no horizontal sums. A packed kernel also computes every token the same way
//! whatever the batch, so prefill and decode give identical results.
//!
//! Layout: for each group of [`PACK_ROWS`] rows, for each block, the group's
//!
//! - `d` of rows 0..8 (f16, 16 bytes);
//! - `m` of rows 0..8 (Q4_1, Q5_1; f16, 16 bytes);
//! - fifth bits (Q5_0, Q5_1): eight u32 masks, mask `j` holding bits `4j..4j + 4` of row `i`'s
//!   `qh` at bits `4i..4i + 4` (32 bytes);
//! - quants: 32 bytes per four quant bytes of a row, bytes `4j..4j + 4` of row `i` at `4i`
//!   (128 bytes for the 4-bit types, whose byte `j` holds values `j` and `j + 16`; 256 for Q8_0).
//!
//! That is exactly [`PACK_ROWS`] blocks' worth of bytes, so packed weights stream no more memory
//! than the originals.

use crate::GgmlType;

/// Rows interleaved in a packed group: one per i32 lane of a 256-bit vector.
pub const PACK_ROWS: usize = 8;

/// Where the fields of a block are, in the source block and in a packed group-block.
struct Layout {
    /// `m` at byte 2 of the source, 16 in the group.
    has_m: bool,
    /// `qh` in the source, and the masks in the group.
    qh: Option<(usize, usize)>,
    /// Quant bytes in the source, and in the group.
    qs: (usize, usize),
    /// Quant bytes per block.
    qs_len: usize,
}

fn layout(ty: GgmlType) -> Option<Layout> {
    use GgmlType::*;
    let (has_m, qh, qs, qs_len) = match ty {
        Q4_0 => (false, None, (2, 16), 16),
        Q4_1 => (true, None, (4, 32), 16),
        Q5_0 => (false, Some((2, 16)), (6, 48), 16),
        Q5_1 => (true, Some((4, 32)), (8, 64), 16),
        Q8_0 => (false, None, (2, 16), 32),
        _ => return None,
    };
    Some(Layout {
        has_m,
        qh,
        qs,
        qs_len,
    })
}

/// The rows of a weight matrix in whole groups of [`PACK_ROWS`], packed; rows past the last whole
/// group are left to the row kernels.
pub struct Packed {
    pub ty: GgmlType,
    bytes: Vec<u8>,
    /// Blocks per row.
    pub nb: usize,
    /// Groups of [`PACK_ROWS`] rows.
    pub groups: usize,
}

impl Packed {
    /// Bytes of one group's block.
    pub fn group_block_bytes(ty: GgmlType) -> usize {
        PACK_ROWS * ty.block_bytes()
    }

    /// Bytes of one group (all its blocks).
    pub fn group_bytes(&self) -> usize {
        self.nb * Self::group_block_bytes(self.ty)
    }

    /// Groups `range`, all blocks.
    pub fn groups(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.bytes[range.start * self.group_bytes()..range.end * self.group_bytes()]
    }
}

/// Whether `ty` has a packed layout.
pub fn can_pack(ty: GgmlType) -> bool {
    layout(ty).is_some()
}

/// Packs the whole groups of `n` rows of `k` values of type `ty`; `None` for types without a
/// packed layout. `for_groups` runs its argument over all group indices, in any order and from
/// any threads (the groups are independent).
///
/// # Panics
/// If `w` holds fewer than `n` rows.
pub fn pack(
    ty: GgmlType,
    w: &[u8],
    k: usize,
    n: usize,
    for_groups: impl FnOnce(usize, &(dyn Fn(usize) + Sync)),
) -> Option<Packed> {
    let lay = layout(ty)?;
    let block = ty.block_bytes();
    let nb = k / ty.block_len();
    let row_bytes = nb * block;
    assert!(w.len() >= n * row_bytes, "{} bytes for {n} rows", w.len());
    let groups = n / PACK_ROWS;
    let gb = Packed::group_block_bytes(ty);
    let mut bytes = vec![0u8; groups * nb * gb];
    struct Out(*mut u8);
    // SAFETY: every group writes only its own bytes.
    unsafe impl Sync for Out {}
    impl Out {
        fn at(&self, i: usize) -> *mut u8 {
            self.0.wrapping_add(i)
        }
    }
    let out = Out(bytes.as_mut_ptr());
    let pack_group = |g: usize| {
        for b in 0..nb {
            // SAFETY: group g's bytes lie in the buffer and belong to this call alone.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.at((g * nb + b) * gb), gb) };
            let mut masks = [0u32; 8];
            for i in 0..PACK_ROWS {
                let src = &w[(g * PACK_ROWS + i) * row_bytes + b * block..][..block];
                dst[2 * i..2 * i + 2].copy_from_slice(&src[..2]);
                if lay.has_m {
                    dst[16 + 2 * i..16 + 2 * i + 2].copy_from_slice(&src[2..4]);
                }
                if let Some((from, _)) = lay.qh {
                    let qh = u32::from_le_bytes(src[from..from + 4].try_into().expect("4 bytes"));
                    for (j, mask) in masks.iter_mut().enumerate() {
                        *mask |= ((qh >> (4 * j)) & 0xF) << (4 * i);
                    }
                }
                let (from, to) = lay.qs;
                for j in 0..lay.qs_len / 4 {
                    let at = to + 32 * j + 4 * i;
                    dst[at..at + 4].copy_from_slice(&src[from + 4 * j..from + 4 * j + 4]);
                }
            }
            if let Some((_, to)) = lay.qh {
                for (j, mask) in masks.iter().enumerate() {
                    dst[to + 4 * j..to + 4 * j + 4].copy_from_slice(&mask.to_le_bytes());
                }
            }
        }
    };
    for_groups(groups, &pack_group);
    Some(Packed {
        ty,
        bytes,
        nb,
        groups,
    })
}
