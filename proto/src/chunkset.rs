//! A set of chunk indices stored as disjoint half-open ranges, so a 50 GB upload with every
//! chunk acknowledged is one range, not 12 800 entries.

use std::collections::BTreeMap;

/// Disjoint, non-adjacent `[start, end)` ranges, keyed by start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChunkSet {
    ranges: BTreeMap<u64, u64>,
}

impl ChunkSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding every index in `[0, count)`.
    pub fn full(count: u64) -> Self {
        let mut set = Self::new();
        set.insert_range(0, count);
        set
    }

    /// How many disjoint ranges the set holds: what it costs in memory.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Adds one index. Returns false if it was already present.
    pub fn insert(&mut self, index: u64) -> bool {
        if self.contains(index) {
            return false;
        }
        self.insert_range(index, index + 1);
        true
    }

    /// Adds every index in `[start, end)`, merging with neighbours.
    pub fn insert_range(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        // Absorb a range that starts before `start` and reaches it.
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        // Absorb every range starting inside `[start, end]`.
        let inside: Vec<u64> = self.ranges.range(start..=end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some(e) = self.ranges.remove(&s) {
                end = end.max(e);
            }
        }
        self.ranges.insert(start, end);
    }

    /// Removes one index. Returns false if it was absent.
    pub fn remove(&mut self, index: u64) -> bool {
        let Some((&s, &e)) = self.ranges.range(..=index).next_back() else {
            return false;
        };
        if index >= e {
            return false;
        }
        self.ranges.remove(&s);
        if s < index {
            self.ranges.insert(s, index);
        }
        if index + 1 < e {
            self.ranges.insert(index + 1, e);
        }
        true
    }

    pub fn contains(&self, index: u64) -> bool {
        self.ranges
            .range(..=index)
            .next_back()
            .is_some_and(|(_, &e)| index < e)
    }

    /// Number of indices held.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The smallest index held.
    pub fn first(&self) -> Option<u64> {
        self.ranges.keys().next().copied()
    }

    /// Removes and returns the smallest index.
    pub fn pop_first(&mut self) -> Option<u64> {
        let first = self.first()?;
        self.remove(first);
        Some(first)
    }

    /// Count of indices `0, 1, 2, …` held without a gap.
    pub fn contiguous_prefix(&self) -> u64 {
        match self.ranges.get(&0) {
            Some(&end) => end,
            None => 0,
        }
    }

    /// The ranges, ascending.
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    /// The indices in `[0, count)` that are not held, as ranges.
    pub fn missing(&self, count: u64) -> ChunkSet {
        let mut out = ChunkSet::new();
        let mut cursor = 0;
        for (s, e) in self.ranges() {
            if s >= count {
                break;
            }
            out.insert_range(cursor, s);
            cursor = e;
        }
        out.insert_range(cursor, count);
        out
    }

    /// Every index held, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.ranges().flat_map(|(s, e)| s..e)
    }

    /// True when every index of `other` is held here.
    pub fn is_superset(&self, other: &ChunkSet) -> bool {
        other.ranges().all(|(s, e)| {
            self.ranges
                .range(..=s)
                .next_back()
                .is_some_and(|(_, &end)| e <= end)
        })
    }

    /// The wire form: `[[start, end], …]`.
    pub fn to_wire(&self) -> Vec<[u64; 2]> {
        self.ranges().map(|(s, e)| [s, e]).collect()
    }

    /// One page of the wire form: at most `max` ranges covering indices from `from` on (a range
    /// that straddles `from` is cut there), and where the next page starts if any remain.
    pub fn to_wire_page(&self, from: u64, max: usize) -> (Vec<[u64; 2]>, Option<u64>) {
        let mut ranges = self
            .ranges()
            .filter(|&(_, e)| e > from)
            .map(|(s, e)| [s.max(from), e]);
        let page: Vec<[u64; 2]> = ranges.by_ref().take(max).collect();
        (page, ranges.next().map(|[s, _]| s))
    }

    /// Reads the wire form, refusing empty, inverted or out-of-range ranges.
    pub fn from_wire(ranges: &[[u64; 2]], count: u64) -> Result<Self, RangeError> {
        let mut set = ChunkSet::new();
        for &[s, e] in ranges {
            if s >= e || e > count {
                return Err(RangeError {
                    start: s,
                    end: e,
                    count,
                });
            }
            set.insert_range(s, e);
        }
        Ok(set)
    }
}

impl FromIterator<u64> for ChunkSet {
    fn from_iter<I: IntoIterator<Item = u64>>(iter: I) -> Self {
        let mut set = ChunkSet::new();
        for i in iter {
            set.insert(i);
        }
        set
    }
}

/// A range on the wire that is empty, inverted or past the chunk count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("chunk range [{start}, {end}) is not inside [0, {count})")]
pub struct RangeError {
    pub start: u64,
    pub end: u64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Reading page after page, each from the previous page's `next`, gives the whole set.
    #[test]
    fn pages_add_up_to_the_whole_set() {
        let set: ChunkSet = (0..100u64).filter(|i| i % 3 != 1).collect();
        let mut from = 0;
        let mut read = ChunkSet::new();
        let mut pages = 0;
        loop {
            let (page, next) = set.to_wire_page(from, 7);
            assert!(page.len() <= 7);
            for [s, e] in page {
                read.insert_range(s, e);
            }
            pages += 1;
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        assert_eq!(read, set);
        assert_eq!(pages, 34_usize.div_ceil(7));
        assert_eq!(
            set.to_wire_page(50, 1).0,
            vec![[50, 52]],
            "a range cut at from"
        );
        assert_eq!(set.to_wire_page(200, 5), (vec![], None));
    }

    #[test]
    fn merges_neighbours_and_splits_on_remove() {
        let mut set = ChunkSet::new();
        set.insert(0);
        set.insert(2);
        assert_eq!(set.to_wire(), vec![[0, 1], [2, 3]]);
        set.insert(1);
        assert_eq!(set.to_wire(), vec![[0, 3]]);
        assert_eq!(set.contiguous_prefix(), 3);
        set.remove(1);
        assert_eq!(set.to_wire(), vec![[0, 1], [2, 3]]);
        assert_eq!(set.missing(5).to_wire(), vec![[1, 2], [3, 5]]);
    }

    #[test]
    fn wire_ranges_are_checked() {
        assert!(ChunkSet::from_wire(&[[0, 3]], 3).is_ok());
        assert!(ChunkSet::from_wire(&[[0, 4]], 3).is_err());
        assert!(ChunkSet::from_wire(&[[2, 2]], 3).is_err());
        assert!(ChunkSet::from_wire(&[[2, 1]], 3).is_err());
    }

    proptest! {
        #[test]
        fn behaves_like_a_btreeset(ops in prop::collection::vec((any::<bool>(), 0u64..64), 0..200)) {
            let mut set = ChunkSet::new();
            let mut model = BTreeSet::new();
            for (insert, i) in ops {
                if insert {
                    prop_assert_eq!(set.insert(i), model.insert(i));
                } else {
                    prop_assert_eq!(set.remove(i), model.remove(&i));
                }
            }
            prop_assert_eq!(set.iter().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(set.len(), model.len() as u64);
            let prefix = (0..).take_while(|i| model.contains(i)).count() as u64;
            prop_assert_eq!(set.contiguous_prefix(), prefix);
            let missing: Vec<u64> = (0..64).filter(|i| !model.contains(i)).collect();
            prop_assert_eq!(set.missing(64).iter().collect::<Vec<_>>(), missing);
            // Ranges stay disjoint and non-adjacent.
            let ranges = set.to_wire();
            for pair in ranges.windows(2) {
                prop_assert!(pair[0][1] < pair[1][0]);
            }
        }
    }
}
