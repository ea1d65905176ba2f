//! Weights re-laid for the packed kernels: by the compiler, which stores them so in the plan
//! (marked `packed`), so the CPU maps them and copies nothing at load.
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
//! Layout: for each group of [`PACK_ROWS`] rows, for each block, the group-block. Below, a *unit*
//! is 32 bytes holding four consecutive bytes of a field of each row, row `i`'s at `4i`. For the
//! legacy types (32-value blocks):
//!
//! - `d` of rows 0..8 (f16, 16 bytes);
//! - `m` of rows 0..8 (Q4_1, Q5_1; f16, 16 bytes);
//! - fifth bits (Q5_0, Q5_1): eight u32 masks, mask `j` holding bits `4j..4j + 4` of row `i`'s
//!   `qh` at bits `4i..4i + 4` (32 bytes);
//! - quants: units of the quant bytes (4 for the 4-bit types, whose byte `j` holds values `j`
//!   and `j + 16`; 8 for Q8_0).
//!
//! For Q4_K and Q5_K (256 values in eight sub-blocks of 32, each with a 6-bit scale and min):
//!
//! - `d`, then `dmin`, of rows 0..8 (f16, 32 bytes);
//! - the low four bits of the scales and mins: byte `8j + i` holds sub-block `j`'s scale of row
//!   `i` in its low nibble and its min in the high one (64 bytes);
//! - their top two bits: byte `8 (j % 4) + i` holds sub-block `j`'s scale bits at bit `2 (j /
//!   4)` and its min bits at bit `4 + 2 (j / 4)` (32 bytes);
//! - Q5_K: units of `qh` (8);
//! - units of the quant bytes (32; byte `32c + l` holds values `64c + l` and `64c + 32 + l`).
//!
//! For Q6_K (sixteen sub-blocks of 16 with 8-bit signed scales):
//!
//! - `d` of rows 0..8 (f16, 16 bytes);
//! - scales: 16 bytes per pair of sub-blocks `2k`, `2k + 1`, row `i`'s two at `2i` (128 bytes);
//! - for each half `h` and `u` in 0..8, three units: `ql` units `16h + u` and `16h + 8 + u` (the
//!   low and high four bits of values `128h + 4u..` and their neighbours 32 on) and `qh` unit
//!   `8h + u` (their top two bits), in the order the kernel reads them, so a block streams from
//!   memory front to back (read out of order, the hardware prefetcher lost track of it and the
//!   kernel ran at half the speed from DRAM).
//!
//! That is exactly [`PACK_ROWS`] blocks' worth of bytes, so packed weights stream no more memory
//! than the originals, and every bit of the rows is kept.

use crate::quant::get_scale_min_k4;
use crate::GgmlType;

/// Rows interleaved in a packed group: one per i32 lane of a 256-bit vector.
pub const PACK_ROWS: usize = 8;

/// Bytes of the largest group-block (Q6_K's).
const MAX_GROUP_BLOCK: usize = PACK_ROWS * 210;

/// Where the fields of a legacy block are, in the source block and in a packed group-block.
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

/// How a type's blocks are re-laid (see the module documentation).
enum Scheme {
    Legacy(Layout),
    /// Q4_K (`qh: false`) and Q5_K (`qh: true`).
    ScaleMin {
        qh: bool,
    },
    Q6K,
}

fn scheme(ty: GgmlType) -> Option<Scheme> {
    use GgmlType::*;
    let (has_m, qh, qs, qs_len) = match ty {
        Q4_0 => (false, None, (2, 16), 16),
        Q4_1 => (true, None, (4, 32), 16),
        Q5_0 => (false, Some((2, 16)), (6, 48), 16),
        Q5_1 => (true, Some((4, 32)), (8, 64), 16),
        Q8_0 => (false, None, (2, 16), 32),
        Q4_K => return Some(Scheme::ScaleMin { qh: false }),
        Q5_K => return Some(Scheme::ScaleMin { qh: true }),
        Q6_K => return Some(Scheme::Q6K),
        _ => return None,
    };
    Some(Scheme::Legacy(Layout {
        has_m,
        qh,
        qs,
        qs_len,
    }))
}

/// Copies `units` units of row `i`'s `field` (4 bytes each) into `group` at `at`, or back
/// when `unpack`.
fn units(group: &mut [u8], at: usize, i: usize, field: &mut [u8], units: usize, unpack: bool) {
    placed_units(group, |u| at + 32 * u, i, field, units, unpack);
}

/// [`units`] with unit `u` at `place(u)`.
fn placed_units(
    group: &mut [u8],
    place: impl Fn(usize) -> usize,
    i: usize,
    field: &mut [u8],
    units: usize,
    unpack: bool,
) {
    for u in 0..units {
        let g = &mut group[place(u) + 4 * i..][..4];
        let f = &mut field[4 * u..4 * u + 4];
        if unpack {
            f.copy_from_slice(g);
        } else {
            g.copy_from_slice(f);
        }
    }
}

/// The inverse of [`get_scale_min_k4`]: eight 6-bit scales and mins into Q4_K's twelve bytes.
fn k4_scales_encode(sc: &[u8; 8], mn: &[u8; 8], q: &mut [u8]) {
    for j in 0..4 {
        q[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        q[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        q[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
}

/// Row `i`'s block `block` into the group-block `group` (`unpack: false`), or back out of it.
fn relay(scheme: &Scheme, group: &mut [u8], i: usize, block: &mut [u8], unpack: bool) {
    let mut copy = |g: std::ops::Range<usize>, b: std::ops::Range<usize>| {
        if unpack {
            block[b].copy_from_slice(&group[g]);
        } else {
            group[g].copy_from_slice(&block[b]);
        }
    };
    match scheme {
        Scheme::Legacy(lay) => {
            copy(2 * i..2 * i + 2, 0..2);
            if lay.has_m {
                copy(16 + 2 * i..16 + 2 * i + 2, 2..4);
            }
            if let Some((from, to)) = lay.qh {
                // Bits 4j..4j + 4 of the row's qh are bits 4i..4i + 4 of mask j.
                let mut qh = u32::from_le_bytes(block[from..from + 4].try_into().expect("4"));
                if unpack {
                    qh = 0;
                }
                for j in 0..8 {
                    let at = to + 4 * j;
                    let mut mask = u32::from_le_bytes(group[at..at + 4].try_into().expect("4"));
                    if unpack {
                        qh |= ((mask >> (4 * i)) & 0xF) << (4 * j);
                    } else {
                        mask = (mask & !(0xF << (4 * i))) | (((qh >> (4 * j)) & 0xF) << (4 * i));
                        group[at..at + 4].copy_from_slice(&mask.to_le_bytes());
                    }
                }
                if unpack {
                    block[from..from + 4].copy_from_slice(&qh.to_le_bytes());
                }
            }
            let (from, to) = lay.qs;
            units(group, to, i, &mut block[from..], lay.qs_len / 4, unpack);
        }
        Scheme::ScaleMin { qh } => {
            copy(2 * i..2 * i + 2, 0..2);
            copy(16 + 2 * i..16 + 2 * i + 2, 2..4);
            if unpack {
                let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
                for j in 0..8 {
                    let low = group[32 + 8 * j + i];
                    let high = group[96 + 8 * (j % 4) + i];
                    let shift = 2 * (j / 4);
                    sc[j] = (low & 0xF) | (((high >> shift) & 3) << 4);
                    mn[j] = (low >> 4) | (((high >> (4 + shift)) & 3) << 4);
                }
                k4_scales_encode(&sc, &mn, &mut block[4..16]);
            } else {
                let packed: &[u8; 12] = block[4..16].try_into().expect("12 bytes");
                for j in 0..8 {
                    let (sc, mn) = get_scale_min_k4(j, packed);
                    group[32 + 8 * j + i] = (sc & 0xF) | ((mn & 0xF) << 4);
                    let high = &mut group[96 + 8 * (j % 4) + i];
                    let shift = 2 * (j / 4);
                    *high &= !((3 << shift) | (3 << (4 + shift)));
                    *high |= ((sc >> 4) << shift) | ((mn >> 4) << (4 + shift));
                }
            }
            let qs = if *qh {
                units(group, 128, i, &mut block[16..48], 8, unpack);
                48
            } else {
                16
            };
            units(
                group,
                128 + if *qh { 256 } else { 0 },
                i,
                &mut block[qs..],
                32,
                unpack,
            );
        }
        Scheme::Q6K => {
            copy(2 * i..2 * i + 2, 208..210);
            for k in 0..8 {
                copy(
                    16 + 16 * k + 2 * i..16 + 16 * k + 2 * i + 2,
                    192 + 2 * k..194 + 2 * k,
                );
            }
            // In the order the kernel reads them, so the block streams from memory front to
            // back: for each half h and u, ql units 16h + u and 16h + 8 + u, then qh unit 8h + u.
            let triple = |h: usize, u: usize| 144 + 96 * (8 * h + u);
            let ql = |v: usize| triple(v / 16, v % 8) + 32 * (v / 8 % 2);
            placed_units(group, ql, i, &mut block[..128], 32, unpack);
            let qh = |v: usize| triple(v / 8, v % 8) + 64;
            placed_units(group, qh, i, &mut block[128..192], 16, unpack);
        }
    }
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
        scheme(ty)?;
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
        let scheme = scheme(self.ty).expect("checked at construction");
        let (block, gb) = (self.ty.block_bytes(), Self::group_block_bytes(self.ty));
        let group = self.groups(g..g + 1);
        // On the stack: the embedding lookup unpacks a row per token.
        let mut scratch = [0u8; MAX_GROUP_BLOCK];
        let scratch = &mut scratch[..gb];
        for (b, dst) in out.chunks_exact_mut(block).enumerate() {
            scratch.copy_from_slice(&group[b * gb..(b + 1) * gb]);
            relay(&scheme, scratch, i, dst, true);
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
    scheme(ty).is_some()
}

/// `n` rows of `k` values of type `ty` as a plan stores them packed (see [`Packed`]): the same
/// number of bytes, whole groups re-laid and the remaining rows as they are; `None` for types
/// without a packed layout.
///
/// # Panics
/// If `w` does not hold exactly `n` rows.
pub fn pack(ty: GgmlType, w: &[u8], k: usize, n: usize) -> Option<Vec<u8>> {
    let scheme = scheme(ty)?;
    let block = ty.block_bytes();
    let nb = k / ty.block_len();
    let row_bytes = nb * block;
    assert_eq!(w.len(), n * row_bytes, "{} bytes for {n} rows", w.len());
    let gb = Packed::group_block_bytes(ty);
    let mut bytes = w.to_vec();
    let mut src = vec![0u8; block];
    for g in 0..n / PACK_ROWS {
        for b in 0..nb {
            let dst = &mut bytes[(g * nb + b) * gb..][..gb];
            for i in 0..PACK_ROWS {
                src.copy_from_slice(&w[(g * PACK_ROWS + i) * row_bytes + b * block..][..block]);
                relay(&scheme, dst, i, &mut src, false);
            }
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random 12 bytes of scales and mins (every one of the 96 bits is used) decode and encode
    /// back to themselves.
    #[test]
    fn k4_scales_round_trip() {
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..10_000 {
            let mut q = [0u8; 12];
            for b in &mut q {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
            for j in 0..8 {
                (sc[j], mn[j]) = get_scale_min_k4(j, &q);
            }
            let mut back = [0u8; 12];
            k4_scales_encode(&sc, &mn, &mut back);
            assert_eq!(back, q);
        }
    }

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
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
        ] {
            for n in [8, 13, 24] {
                let k = 3 * ty.block_len();
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
        assert!(pack(GgmlType::Q2_K, &[0; 84], 256, 1).is_none());
        assert!(
            Packed::new(GgmlType::Q8_0, &[0; 34], 32, 2).is_none(),
            "wrong size"
        );
    }
}
