use super::GgufError;

/// A bounds-checked little-endian reader over the file's bytes. Every read either succeeds or
/// reports how far the file fell short; nothing is read past the end.
pub(super) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    pub fn remaining(&self) -> u64 {
        (self.bytes.len() - self.pos) as u64
    }

    pub fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.offset(),
                what: what(),
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    pub fn array<const N: usize>(
        &mut self,
        what: &dyn Fn() -> String,
    ) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    pub fn u8(&mut self, what: &dyn Fn() -> String) -> Result<u8, GgufError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A GGUF string: a u64 byte length, then that many UTF-8 bytes.
    pub fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.offset();
        let bytes = self.take(len, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(GgufError::InvalidUtf8 {
                offset: start,
                what: what(),
            }),
        }
    }

    /// Checks that `count` items of at least `min_item_bytes` each can fit in what is left, so a
    /// forged count fails here instead of driving a huge allocation or a long loop.
    pub fn check_count(
        &self,
        count: u64,
        min_item_bytes: u64,
        what: &dyn Fn() -> String,
    ) -> Result<(), GgufError> {
        let max = self.remaining() / min_item_bytes.max(1);
        if count > max {
            return Err(GgufError::CountTooLarge {
                offset: self.offset(),
                what: what(),
                count,
                available: self.remaining(),
                max,
            });
        }
        Ok(())
    }
}

/// Capacity to reserve for `count` items: the count is already bounded by the file size, but a
/// large file would still let a lying count reserve a lot up front, so growth past this is lazy.
pub(super) fn initial_capacity(count: u64) -> usize {
    count.min(4096) as usize
}
