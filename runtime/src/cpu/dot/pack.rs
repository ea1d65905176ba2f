//! Weights of the legacy types re-laid for the packed kernels: by the compiler, which stores them
//! so in the plan (marked `packed`), so the CPU maps them and copies nothing at load.
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

/// A packed weight as stored in a plan: `groups` whole groups of [`PACK_ROWS`] rows in the packed
/// layout, then the rows past the last whole group as they were.
#[derive(Clone, Copy, Debug)]
pub struct Packed<'w> {
    pub ty: GgmlType,
    bytes: &'w [u8],
    /// Blocks per row.
    pub nb: usize,
    /// Groups of [`PACK_ROWS`] rows.
    pub groups: usize,
}

impl<'w> Packed<'w> {
    /// The packed weight `bytes` of `n` rows of `k` values of type `ty`; `None` where `ty` has no
    /// packed layout or the sizes do not match.
    pub fn new(ty: GgmlType, bytes: &'w [u8], k: usize, n: usize) -> Option<Self> {
        layout(ty)?;
        let row_bytes = usize::try_from(ty.bytes_for(k as u64)?).ok()?;
        (bytes.len() == n.checked_mul(row_bytes)?).then_some(Packed {
            ty,
            bytes,
            nb: k / ty.block_len(),
            groups: n / PACK_ROWS,
        })
    }

    /// Bytes of one group's block.
    pub fn group_block_bytes(ty: GgmlType) -> usize {
        PACK_ROWS * ty.block_bytes()
    }

    /// Bytes of one group (all its blocks).
    pub fn group_bytes(&self) -> usize {
        self.nb * Self::group_block_bytes(self.ty)
    }

    /// Groups `range`, all blocks.
    pub fn groups(&self, range: std::ops::Range<usize>) -> &'w [u8] {
        &self.bytes[range.start * self.group_bytes()..range.end * self.group_bytes()]
    }

    /// The rows past the last whole group, as stored originally (row `groups * PACK_ROWS` first).
    pub fn tail_rows(&self) -> &'w [u8] {
        &self.bytes[self.groups * self.group_bytes()..]
    }

    /// Row `row`'s original bytes, into `out` (one row's worth).
    pub fn row_into(&self, row: usize, out: &mut [u8]) {
        let (g, i) = (row / PACK_ROWS, row % PACK_ROWS);
        if g >= self.groups {
            let at = (row - self.groups * PACK_ROWS) * out.len();
            out.copy_from_slice(&self.tail_rows()[at..at + out.len()]);
            return;
        }
        let lay = layout(self.ty).expect("checked at construction");
        let (block, gb) = (self.ty.block_bytes(), Self::group_block_bytes(self.ty));
        for (b, dst) in out.chunks_exact_mut(block).enumerate() {
            let src = &self.groups(g..g + 1)[b * gb..(b + 1) * gb];
            dst[..2].copy_from_slice(&src[2 * i..2 * i + 2]);
            if lay.has_m {
                dst[2..4].copy_from_slice(&src[16 + 2 * i..16 + 2 * i + 2]);
            }
            if let Some((at, from)) = lay.qh {
                let mut qh = 0u32;
                for j in 0..8 {
                    let mask = u32::from_le_bytes(
                        src[from + 4 * j..from + 4 * j + 4]
                            .try_into()
                            .expect("4 bytes"),
                    );
                    qh |= ((mask >> (4 * i)) & 0xF) << (4 * j);
                }
                dst[at..at + 4].copy_from_slice(&qh.to_le_bytes());
            }
            let (at, from) = lay.qs;
            for j in 0..lay.qs_len / 4 {
                let src_at = from + 32 * j + 4 * i;
                dst[at + 4 * j..at + 4 * j + 4].copy_from_slice(&src[src_at..src_at + 4]);
            }
        }
    }

    /// Every row in its original layout: what a consumer of plain rows (the GPU) reads.
    pub fn unpack(&self) -> Vec<u8> {
        let row_bytes = self.nb * self.ty.block_bytes();
        let mut rows = vec![0u8; self.bytes.len()];
        for (r, out) in rows.chunks_exact_mut(row_bytes).enumerate() {
            self.row_into(r, out);
        }
        rows
    }
}

/// Whether `ty` has a packed layout.
pub fn can_pack(ty: GgmlType) -> bool {
    layout(ty).is_some()
}

/// `n` rows of `k` values of type `ty` as a plan stores them packed (see [`Packed`]): the same
/// number of bytes, whole groups re-laid and the remaining rows as they are; `None` for types
/// without a packed layout.
///
/// # Panics
/// If `w` does not hold exactly `n` rows.
pub fn pack(ty: GgmlType, w: &[u8], k: usize, n: usize) -> Option<Vec<u8>> {
    let lay = layout(ty)?;
    let block = ty.block_bytes();
    let nb = k / ty.block_len();
    let row_bytes = nb * block;
    assert_eq!(w.len(), n * row_bytes, "{} bytes for {n} rows", w.len());
    let groups = n / PACK_ROWS;
    let gb = Packed::group_block_bytes(ty);
    let mut bytes = w.to_vec();
    for g in 0..groups {
        for b in 0..nb {
            let dst = &mut bytes[(g * nb + b) * gb..][..gb];
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
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Packing keeps every row: unpacked, and row by row, the bytes come back as they were, for
    /// every packable type and for row counts with and without a partial group.
    #[test]
    fn packing_round_trips_every_row() {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q5_0,
            GgmlType::Q5_1,
            GgmlType::Q8_0,
        ] {
            for n in [8, 13, 24] {
                let k = 96;
                let row_bytes = ty.bytes_for(k as u64).unwrap() as usize;
                let w: Vec<u8> = (0..n * row_bytes).map(|i| (i * 131 % 251) as u8).collect();
                let packed = pack(ty, &w, k, n).unwrap();
                assert_eq!(packed.len(), w.len());
                assert_ne!(
                    packed[..row_bytes],
                    w[..row_bytes],
                    "{ty}: rows were re-laid"
                );
                let view = Packed::new(ty, &packed, k, n).unwrap();
                assert_eq!(view.unpack(), w, "{ty} n={n}");
                let mut row = vec![0u8; row_bytes];
                view.row_into(n - 1, &mut row);
                assert_eq!(row, w[(n - 1) * row_bytes..], "{ty} n={n}: last row");
            }
        }
        assert!(pack(GgmlType::Q4_K, &[0; 144], 256, 1).is_none());
        assert!(
            Packed::new(GgmlType::Q8_0, &[0; 34], 32, 2).is_none(),
            "wrong size"
        );
    }
}
