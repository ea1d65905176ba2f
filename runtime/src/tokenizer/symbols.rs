//! The working state both merge-based tokenizers share: a text split into adjacent byte runs
//! ("symbols"), kept as a linked list so that merging a pair is O(1).

use std::ops::Range;

const NONE: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    /// 0 once merged into the left neighbour.
    len: usize,
    prev: usize,
    next: usize,
}

pub(super) struct Symbols {
    items: Vec<Symbol>,
}

impl Symbols {
    /// One symbol per code point of `text`.
    pub(super) fn new(text: &str) -> Symbols {
        let n = text.chars().count();
        let items = text
            .char_indices()
            .enumerate()
            .map(|(i, (start, c))| Symbol {
                start,
                len: c.len_utf8(),
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
            })
            .collect();
        Symbols { items }
    }

    /// The adjacent pairs before any merge.
    pub(super) fn initial_pairs(&self) -> impl Iterator<Item = (usize, usize)> {
        (1..self.items.len()).map(|i| (i - 1, i))
    }

    /// The bytes symbol `i` covers.
    pub(super) fn range(&self, i: usize) -> Range<usize> {
        let s = self.items[i];
        s.start..s.start + s.len
    }

    /// Merges `right` into `left` if the pair is unchanged since the two measured `size` bytes
    /// together: symbols only grow to the right, so a changed pair has a dead member or another
    /// length. Returns the new pairs the merged symbol forms with its neighbours.
    pub(super) fn merge(
        &mut self,
        left: usize,
        right: usize,
        size: usize,
    ) -> Option<[Option<(usize, usize)>; 2]> {
        let (l, r) = (self.items[left], self.items[right]);
        if l.len == 0 || r.len == 0 || l.len + r.len != size {
            return None;
        }
        self.items[left].len += r.len;
        self.items[left].next = r.next;
        self.items[right].len = 0;
        if r.next != NONE {
            self.items[r.next].prev = left;
        }
        let before = (l.prev != NONE).then_some((l.prev, left));
        let after = (r.next != NONE).then_some((left, r.next));
        Some([before, after])
    }

    /// The byte ranges of the remaining symbols, in order.
    pub(super) fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        let first = if self.items.is_empty() { NONE } else { 0 };
        std::iter::successors((first != NONE).then_some(first), |&i| {
            let next = self.items[i].next;
            (next != NONE).then_some(next)
        })
        .map(|i| self.range(i))
    }
}
