//! The plan container: a fixed preamble, the RON header, the tokenizer (JSON) and the weights, with
//! a content hash over everything after the hash itself.
//!
//! ```text
//! 0    magic "LLAMPLAN"
//! 8    format version (u32 LE), 4 reserved bytes
//! 16   xxh3-128 of bytes [32, end)
//! 32   header    offset, length (u64 LE each)
//! 48   tokenizer offset, length
//! 64   weights   offset, length   (offset aligned to 64)
//! 128  sections
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::{PlanHeader, WeightInfo, WEIGHT_ALIGN};

pub const MAGIC: &[u8; 8] = b"LLAMPLAN";
/// Bumped whenever the plan layout or any serialized type changes meaning.
pub const FORMAT_VERSION: u32 = 9;
const PREAMBLE: u64 = 128;

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("cannot read plan {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a llamac plan (bad magic; a GGUF file must first be compiled with `llamac compile`)")]
    NotAPlan(PathBuf),
    #[error("{path} is plan format version {found}, but this llamart reads version {FORMAT_VERSION}: recompile the model with the matching llamac")]
    Version { path: PathBuf, found: u32 },
    #[error("{path} is damaged: {what}")]
    Damaged { path: PathBuf, what: String },
}

/// Writes a plan atomically: to a temporary file beside the target, renamed into place only once
/// complete, so a failed compile never leaves a truncated plan behind.
pub struct PlanWriter;

impl PlanWriter {
    pub fn write<'a>(
        path: &Path,
        header: &PlanHeader,
        tokenizer_json: &[u8],
        weights: impl IntoIterator<Item = &'a [u8]>,
    ) -> std::io::Result<u64> {
        let header_text = ron::ser::to_string_pretty(header, ron::ser::PrettyConfig::default())
            .map_err(std::io::Error::other)?;
        let header_off = PREAMBLE;
        let tok_off = header_off + header_text.len() as u64;
        let weights_off =
            (tok_off + tokenizer_json.len() as u64).div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;

        let mut body = Vec::with_capacity((weights_off - 32) as usize);
        for (off, len) in [
            (header_off, header_text.len() as u64),
            (tok_off, tokenizer_json.len() as u64),
            (weights_off, 0),
        ] {
            body.extend_from_slice(&off.to_le_bytes());
            body.extend_from_slice(&len.to_le_bytes());
        }
        body.resize((PREAMBLE - 32) as usize, 0);
        body.extend_from_slice(header_text.as_bytes());
        body.extend_from_slice(tokenizer_json);
        body.resize((weights_off - 32) as usize, 0);

        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut weights_len = 0u64;
        let weight_bytes: Vec<&[u8]> = weights.into_iter().collect();
        for (i, w) in weight_bytes.iter().enumerate() {
            let entry = &header.weights[i];
            if entry.offset != weights_len || entry.bytes != w.len() as u64 {
                return Err(std::io::Error::other(format!(
                    "weight '{}' does not match its header entry (offset {} vs {}, {} bytes vs {})",
                    entry.name,
                    entry.offset,
                    weights_len,
                    entry.bytes,
                    w.len()
                )));
            }
            weights_len = (weights_len + w.len() as u64).div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN;
        }
        body[40..48].copy_from_slice(&weights_len.to_le_bytes());
        hasher.update(&body);
        let pad = [0u8; WEIGHT_ALIGN as usize];
        let mut written = 0u64;
        for w in &weight_bytes {
            hasher.update(w);
            let p = (written + w.len() as u64).div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN
                - written
                - w.len() as u64;
            hasher.update(&pad[..p as usize]);
            written += w.len() as u64 + p;
        }

        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let result = (|| {
            let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
            f.write_all(MAGIC)?;
            f.write_all(&FORMAT_VERSION.to_le_bytes())?;
            f.write_all(&[0u8; 4])?;
            f.write_all(&hasher.digest128().to_le_bytes())?;
            f.write_all(&body)?;
            let mut written = 0u64;
            for w in &weight_bytes {
                f.write_all(w)?;
                let p = (written + w.len() as u64).div_ceil(WEIGHT_ALIGN) * WEIGHT_ALIGN
                    - written
                    - w.len() as u64;
                f.write_all(&pad[..p as usize])?;
                written += w.len() as u64 + p;
            }
            f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result.map(|()| weights_off + weights_len)
    }
}

/// A plan mapped into memory and checked: magic, version, section bounds, content hash, header,
/// and every weight's extent.
pub struct LoadedPlan {
    map: memmap2::Mmap,
    pub header: PlanHeader,
    tokenizer: (usize, usize),
    weights_off: usize,
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl LoadedPlan {
    pub fn open(path: &Path) -> Result<LoadedPlan, PlanError> {
        let io = |source| PlanError::Io {
            path: path.to_path_buf(),
            source,
        };
        let damaged = |what: String| PlanError::Damaged {
            path: path.to_path_buf(),
            what,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        // SAFETY: mapped read-only; the plan is not expected to change while it is in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        if map.len() < 8 || &map[..8] != MAGIC {
            return Err(PlanError::NotAPlan(path.to_path_buf()));
        }
        if map.len() < PREAMBLE as usize {
            return Err(damaged(format!(
                "only {} bytes, shorter than the preamble",
                map.len()
            )));
        }
        let version = u32::from_le_bytes(map[8..12].try_into().expect("4 bytes"));
        if version != FORMAT_VERSION {
            return Err(PlanError::Version {
                path: path.to_path_buf(),
                found: version,
            });
        }
        let len = map.len() as u64;
        let section = |at: usize, name: &str| -> Result<(usize, usize), PlanError> {
            let (off, n) = (read_u64(&map, at), read_u64(&map, at + 8));
            match off.checked_add(n) {
                Some(end) if off >= PREAMBLE && end <= len => Ok((off as usize, n as usize)),
                _ => Err(damaged(format!(
                    "truncated: the {name} section [{off}, +{n}) ends past the file's {len} bytes"
                ))),
            }
        };
        let (h_off, h_len) = section(32, "header")?;
        let tokenizer = section(48, "tokenizer")?;
        let (w_off, w_len) = section(64, "weights")?;
        if w_off + w_len != map.len() {
            return Err(damaged(format!(
                "file is {} bytes but its sections end at byte {} (truncated or appended to)",
                map.len(),
                w_off + w_len
            )));
        }
        let stored = u128::from_le_bytes(map[16..32].try_into().expect("16 bytes"));
        let actual = xxhash_rust::xxh3::xxh3_128(&map[32..]);
        if stored != actual {
            return Err(damaged(format!(
                "content hash mismatch (stored {stored:032x}, computed {actual:032x})"
            )));
        }
        let text = std::str::from_utf8(&map[h_off..h_off + h_len])
            .map_err(|e| damaged(format!("header is not UTF-8: {e}")))?;
        let header: PlanHeader =
            ron::from_str(text).map_err(|e| damaged(format!("header does not parse: {e}")))?;
        if header.format_version != FORMAT_VERSION {
            return Err(damaged(format!(
                "header says format version {} inside a version {FORMAT_VERSION} container",
                header.format_version
            )));
        }
        for w in &header.weights {
            check_weight(w, w_len as u64).map_err(damaged)?;
        }
        Ok(LoadedPlan {
            map,
            header,
            tokenizer,
            weights_off: w_off,
        })
    }

    pub fn tokenizer_json(&self) -> &[u8] {
        &self.map[self.tokenizer.0..self.tokenizer.0 + self.tokenizer.1]
    }

    /// The bytes of weight `index` (extents were checked at load).
    pub fn weight(&self, index: u32) -> &[u8] {
        let w = &self.header.weights[index as usize];
        let start = self.weights_off + w.offset as usize;
        &self.map[start..start + w.bytes as usize]
    }

    /// The content hash stored in (and checked against) the file: the plan's identity.
    pub fn content_hash(&self) -> u128 {
        u128::from_le_bytes(self.map[16..32].try_into().expect("16 bytes"))
    }

    pub fn file_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    /// The readable part, as stored.
    pub fn header_text(&self) -> String {
        ron::ser::to_string_pretty(&self.header, ron::ser::PrettyConfig::default())
            .unwrap_or_default()
    }
}

fn check_weight(w: &WeightInfo, section_len: u64) -> Result<(), String> {
    let n: Option<u64> = w.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let expected = n.and_then(|n| w.ty.bytes_for(n));
    if expected != Some(w.bytes) {
        return Err(format!(
            "weight '{}' of type {} and shape {:?} claims {} bytes",
            w.name, w.ty, w.dims, w.bytes
        ));
    }
    if !w.offset.is_multiple_of(WEIGHT_ALIGN)
        || w.offset
            .checked_add(w.bytes)
            .is_none_or(|end| end > section_len)
    {
        return Err(format!(
            "weight '{}' at [{}, +{}) lies outside the weight section",
            w.name, w.offset, w.bytes
        ));
    }
    Ok(())
}
