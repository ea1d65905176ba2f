//! The KV cache's page pool: which sequences hold which pages, and which full pages of earlier
//! sequences are kept so that a new sequence starting with the same tokens reuses them.
//!
//! A page is free, held (by one or more sequences: a shared prefix), or cached (held by none, but
//! its keys and values are kept for reuse until the pool needs the page: least recently used
//! first). A cached page is found by its tokens and the page before it, so a reused prefix is
//! always exactly the tokens that were computed into it.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

/// What a full page was computed from: its tokens after the page `parent` (in its generation).
struct Content {
    parent: Option<(u32, u32)>,
    tokens: Vec<u32>,
}

pub struct PagePool {
    page_tokens: usize,
    /// Sequences holding each page.
    refs: Vec<u32>,
    /// Bumped whenever a page's contents are dropped, so that a child page's record of its parent
    /// never matches the page's next contents.
    generation: Vec<u32>,
    /// The step count when each page was last held, for least-recently-used eviction.
    last_used: Vec<u64>,
    /// Full pages registered for reuse, by the hash of their content, and each page's content.
    by_content: HashMap<u64, u32>,
    content: Vec<Option<Content>>,
    /// Pages neither held nor cached.
    free: Vec<u32>,
    clock: u64,
}

impl PagePool {
    pub fn new(pages: u32, page_tokens: usize) -> Self {
        let n = pages as usize;
        PagePool {
            page_tokens,
            refs: vec![0; n],
            generation: vec![0; n],
            last_used: vec![0; n],
            by_content: HashMap::new(),
            content: (0..n).map(|_| None).collect(),
            free: (0..pages).rev().collect(),
            clock: 0,
        }
    }

    pub fn page_tokens(&self) -> usize {
        self.page_tokens
    }

    pub fn pages(&self) -> usize {
        self.refs.len()
    }

    /// Pages some sequence holds.
    pub fn held(&self) -> usize {
        self.refs.iter().filter(|&&r| r > 0).count()
    }

    /// Pages neither held nor cached.
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Pages that can be taken now: free ones and cached ones nobody holds.
    pub fn available(&self) -> usize {
        self.refs.iter().filter(|&&r| r == 0).count()
    }

    /// Marks the passing of a step: pages held now count as used after those held before.
    pub fn tick(&mut self) {
        self.clock += 1;
    }

    fn key(parent: Option<(u32, u32)>, tokens: &[u32]) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        parent.hash(&mut h);
        tokens.hash(&mut h);
        h.finish()
    }

    /// Takes a page for a sequence to write: a free one, or else the least recently used cached
    /// one (its contents are dropped). `None` when every page is held.
    pub fn take(&mut self) -> Option<u32> {
        let page = match self.free.pop() {
            Some(p) => p,
            None => {
                let p = (0..self.refs.len())
                    .filter(|&p| self.refs[p] == 0)
                    .min_by_key(|&p| (self.last_used[p], p))? as u32;
                self.forget(p);
                p
            }
        };
        self.refs[page as usize] = 1;
        self.last_used[page as usize] = self.clock;
        Some(page)
    }

    /// Drops a page's registered contents.
    fn forget(&mut self, page: u32) {
        if let Some(c) = self.content[page as usize].take() {
            let key = Self::key(c.parent, &c.tokens);
            if self.by_content.get(&key) == Some(&page) {
                self.by_content.remove(&key);
            }
        }
        self.generation[page as usize] += 1;
    }

    /// A sequence lets go of its pages: each page nobody else holds becomes cached if it was
    /// registered, else free.
    pub fn release(&mut self, pages: &[u32]) {
        for &p in pages {
            let r = &mut self.refs[p as usize];
            debug_assert!(*r > 0, "page {p} released more often than taken");
            *r -= 1;
            if *r == 0 {
                self.last_used[p as usize] = self.clock;
                if self.content[p as usize].is_none() {
                    self.generation[p as usize] += 1;
                    self.free.push(p);
                }
            }
        }
    }

    /// Registers `page`, whose `page_tokens` positions hold `tokens` after the page `parent`
    /// (none for a sequence's first page), for reuse. A page with the same content already
    /// registered stays the one found.
    pub fn register(&mut self, page: u32, parent: Option<u32>, tokens: &[u32]) {
        debug_assert_eq!(tokens.len(), self.page_tokens);
        if self.content[page as usize].is_some() {
            return;
        }
        let parent = parent.map(|p| (p, self.generation[p as usize]));
        let key = Self::key(parent, tokens);
        if self.by_content.contains_key(&key) {
            return;
        }
        self.by_content.insert(key, page);
        self.content[page as usize] = Some(Content {
            parent,
            tokens: tokens.to_vec(),
        });
    }

    /// The longest run of registered pages holding `tokens` from position 0, in whole pages,
    /// each now held once more (and so protected from eviction) for the caller.
    pub fn reuse_prefix(&mut self, tokens: &[u32], out: &mut Vec<u32>) {
        let mut parent: Option<(u32, u32)> = None;
        for chunk in tokens.chunks_exact(self.page_tokens) {
            let Some(&page) = self.by_content.get(&Self::key(parent, chunk)) else {
                break;
            };
            let matches = self.content[page as usize]
                .as_ref()
                .is_some_and(|c| c.parent == parent && c.tokens == chunk);
            if !matches {
                break;
            }
            if self.refs[page as usize] == 0 {
                self.free.retain(|&f| f != page);
            }
            self.refs[page as usize] += 1;
            self.last_used[page as usize] = self.clock;
            out.push(page);
            parent = Some((page, self.generation[page as usize]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_taken_released_cached_and_reused_by_content() {
        let mut pool = PagePool::new(4, 2);
        let a: Vec<u32> = (0..3).map(|_| pool.take().unwrap()).collect();
        assert_eq!(pool.available(), 1);
        pool.register(a[0], None, &[1, 2]);
        pool.register(a[1], Some(a[0]), &[3, 4]);
        pool.release(&a);
        assert_eq!(pool.held(), 0);
        assert_eq!(pool.available(), 4);

        let mut reused = Vec::new();
        pool.reuse_prefix(&[1, 2, 3, 4, 5], &mut reused);
        assert_eq!(reused, a[..2]);
        pool.release(&reused);

        reused.clear();
        pool.reuse_prefix(&[1, 2, 9, 9], &mut reused);
        assert_eq!(reused, a[..1], "the second page holds other tokens");
        reused.clear();
        pool.reuse_prefix(&[9, 9, 3, 4], &mut reused);
        assert!(
            reused.is_empty(),
            "same tokens after another parent are not a match"
        );
        pool.release(&a[..1]);

        // Four takes: the free pages first, then the cached ones, least recently used first; the
        // evicted parent's child no longer matches.
        let taken: Vec<u32> = (0..4).map(|_| pool.take().unwrap()).collect();
        assert!(pool.take().is_none(), "every page held");
        pool.release(&taken);
        reused.clear();
        pool.reuse_prefix(&[1, 2, 3, 4], &mut reused);
        assert!(reused.is_empty());
    }
}
