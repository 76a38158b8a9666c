//! How a file is cut into chunks: every chunk is `chunk_size` bytes except possibly the last.
//! A [`ChunkIndex`] can only be made through a layout, so it is always in range.

/// The chunk geometry of one upload. Fixed at create time, never changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkLayout {
    size: u64,
    chunk_size: u64,
    count: u64,
}

/// An index known to be inside its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkIndex(u64);

/// The bytes of one chunk inside the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// A chunk size of zero was asked for.
    #[error("chunk size must be at least 1 byte")]
    ZeroChunkSize,
    /// A chunk index at or past the chunk count.
    #[error("chunk index {index} is out of range, the upload has {count} chunks")]
    IndexOutOfRange { index: u64, count: u64 },
}

impl ChunkLayout {
    pub fn new(size: u64, chunk_size: u64) -> Result<Self, LayoutError> {
        if chunk_size == 0 {
            return Err(LayoutError::ZeroChunkSize);
        }
        Ok(Self {
            size,
            chunk_size,
            count: size.div_ceil(chunk_size),
        })
    }

    /// Total file size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn chunk_size(&self) -> u64 {
        self.chunk_size
    }

    /// Number of chunks; zero for an empty file.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Checks a raw index from the outside world.
    pub fn index(&self, raw: u64) -> Result<ChunkIndex, LayoutError> {
        if raw < self.count {
            Ok(ChunkIndex(raw))
        } else {
            Err(LayoutError::IndexOutOfRange {
                index: raw,
                count: self.count,
            })
        }
    }

    pub fn span(&self, index: ChunkIndex) -> Span {
        let offset = index.0 * self.chunk_size;
        Span {
            offset,
            len: self.chunk_size.min(self.size - offset),
        }
    }

    /// Bytes covered by the chunks in `set`.
    pub fn bytes_in(&self, set: &crate::ChunkSet) -> u64 {
        set.ranges()
            .map(|(start, end)| {
                let end_byte = (end * self.chunk_size).min(self.size);
                end_byte - start * self.chunk_size
            })
            .sum()
    }

    /// Length in bytes of the contiguous prefix of chunks held in `set`.
    pub fn prefix_bytes(&self, set: &crate::ChunkSet) -> u64 {
        (set.contiguous_prefix() * self.chunk_size).min(self.size)
    }

    /// Every index of the layout, in order.
    pub fn indices(&self) -> impl Iterator<Item = ChunkIndex> {
        (0..self.count).map(ChunkIndex)
    }
}

impl ChunkIndex {
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for ChunkIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_chunk_is_short() {
        let layout = ChunkLayout::new(10, 4).unwrap();
        assert_eq!(layout.count(), 3);
        assert_eq!(
            layout.span(layout.index(2).unwrap()),
            Span { offset: 8, len: 2 }
        );
        assert_eq!(
            layout.index(3),
            Err(LayoutError::IndexOutOfRange { index: 3, count: 3 })
        );
    }

    #[test]
    fn exact_multiple_and_empty() {
        assert_eq!(ChunkLayout::new(8, 4).unwrap().count(), 2);
        let empty = ChunkLayout::new(0, 4).unwrap();
        assert_eq!(empty.count(), 0);
        assert!(empty.index(0).is_err());
        assert_eq!(ChunkLayout::new(1, 0), Err(LayoutError::ZeroChunkSize));
    }

    #[test]
    fn huge_sizes_do_not_overflow() {
        let layout = ChunkLayout::new(u64::MAX, 1 << 20).unwrap();
        let last = layout.index(layout.count() - 1).unwrap();
        let span = layout.span(last);
        assert_eq!(span.offset + span.len, u64::MAX);
    }
}
