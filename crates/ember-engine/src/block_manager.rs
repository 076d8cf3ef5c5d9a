//! Which KV pool blocks are free, in use, or holding a cached prefix.
//!
//! A full block is identified by a hash of (its parent block's hash, its
//! token ids, the part of the prompt's global spans inside it), so equal
//! prefixes hash equally and a new request can take over the blocks of the
//! longest prefix already computed. The spans count because under sparse
//! attention they change what every later position attends to, and so the
//! keys and values computed there: a prefix computed under other spans is
//! a different prefix. Blocks nobody
//! references keep their contents and stay findable until they are needed
//! for something else, least recently used first.

use std::collections::{BTreeSet, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

pub type BlockId = u32;

/// A broken bookkeeping invariant: a bug in Ember, never a user's doing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    #[error("block {0} was released more often than it was referenced")]
    DoubleFree(BlockId),
    #[error("{needed} blocks were asked for but only {available} are available")]
    Exhausted { needed: usize, available: usize },
}

/// The hash of the (empty) parent of a sequence's first block.
pub const ROOT_HASH: u64 = 0;

#[derive(Debug, Clone, Default)]
struct BlockMeta {
    refs: u32,
    /// Set while the block is findable in the prefix cache.
    cached: Option<CachedKey>,
    /// When it last lost its last reference (LRU order).
    released_at: u64,
}

#[derive(Debug, Clone)]
struct CachedKey {
    hash: u64,
    parent: u64,
    /// Kept to rule out hash collisions on lookup.
    tokens: Vec<u32>,
    spans: Vec<Range<usize>>,
}

pub struct BlockManager {
    block_size: usize,
    blocks: Vec<BlockMeta>,
    /// Unreferenced blocks holding nothing worth keeping.
    free: Vec<BlockId>,
    /// Unreferenced cached blocks, oldest release first.
    evictable: BTreeSet<(u64, BlockId)>,
    by_hash: HashMap<u64, BlockId>,
    clock: u64,
    /// A block never handed out, standing in a table for a block given back
    /// early (`BlockTable::retire`), as vLLM v1's `null_block` does for
    /// sliding-window attention: positions keep their table index, and the
    /// attention that skips them never reads it.
    null_block: Option<BlockId>,
}

impl BlockManager {
    pub fn new(num_blocks: usize, block_size: usize) -> Self {
        Self {
            block_size,
            blocks: vec![BlockMeta::default(); num_blocks],
            // Popped from the back: low ids first.
            free: (0..num_blocks as BlockId).rev().collect(),
            evictable: BTreeSet::new(),
            by_hash: HashMap::new(),
            clock: 0,
            null_block: None,
        }
    }

    /// Sets one block aside as the placeholder for retired blocks (only a
    /// pool whose sequences retire blocks pays for it).
    pub fn reserve_null_block(&mut self) {
        if self.null_block.is_none() {
            self.null_block = self.allocate();
        }
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks that can be handed out now (free or evictable).
    pub fn num_available(&self) -> usize {
        self.free.len() + self.evictable.len()
    }

    /// Blocks referenced by at least one sequence.
    pub fn num_used(&self) -> usize {
        self.num_blocks() - self.num_available()
    }

    /// A block for new contents: a free one, else the least recently
    /// released cached one, which leaves the prefix cache.
    pub fn allocate(&mut self) -> Option<BlockId> {
        let block = match self.free.pop() {
            Some(b) => b,
            None => {
                let oldest = *self.evictable.iter().next()?;
                self.evictable.remove(&oldest);
                let b = oldest.1;
                if let Some(key) = self.blocks[b as usize].cached.take() {
                    self.by_hash.remove(&key.hash);
                }
                b
            }
        };
        self.blocks[block as usize].refs = 1;
        Some(block)
    }

    /// `n` blocks for new contents, or none at all when fewer are available.
    pub fn allocate_n(&mut self, n: usize) -> Result<Vec<BlockId>, BlockError> {
        let available = self.num_available();
        if n > available {
            return Err(BlockError::Exhausted { needed: n, available });
        }
        Ok((0..n).filter_map(|_| self.allocate()).collect())
    }

    /// Drops one reference; an unreferenced cached block stays findable.
    /// Releasing an unreferenced block is refused: putting it on the free
    /// list twice would hand one block to two sequences.
    pub fn release(&mut self, block: BlockId) -> Result<(), BlockError> {
        if Some(block) == self.null_block {
            return Ok(());
        }
        let meta = &mut self.blocks[block as usize];
        if meta.refs == 0 {
            return Err(BlockError::DoubleFree(block));
        }
        meta.refs -= 1;
        if meta.refs > 0 {
            return Ok(());
        }
        self.clock += 1;
        meta.released_at = self.clock;
        if meta.cached.is_some() {
            self.evictable.insert((self.clock, block));
        } else {
            self.free.push(block);
        }
        Ok(())
    }

    /// The blocks caching the longest prefix of `tokens`, in whole blocks
    /// and at most `max_blocks`, each now referenced by the caller; with
    /// their hashes for chaining the next block.
    pub fn match_prefix(&mut self, tokens: &[u32], global_spans: &[Range<usize>], max_blocks: usize) -> Vec<(BlockId, u64)> {
        let mut found = Vec::new();
        let mut parent = ROOT_HASH;
        for (b, chunk) in tokens.chunks_exact(self.block_size).take(max_blocks).enumerate() {
            let spans = spans_within(global_spans, b * self.block_size..(b + 1) * self.block_size);
            let hash = block_hash(parent, chunk, &spans);
            let Some(&block) = self.by_hash.get(&hash) else { break };
            let meta = &self.blocks[block as usize];
            let same = meta
                .cached
                .as_ref()
                .is_some_and(|k| k.parent == parent && k.tokens == chunk && k.spans == spans);
            if !same {
                break;
            }
            if meta.refs == 0 {
                self.evictable.remove(&(meta.released_at, block));
            }
            self.blocks[block as usize].refs += 1;
            found.push((block, hash));
            parent = hash;
        }
        found
    }

    /// Makes a block that now holds `tokens` (the sequence's `index`-th
    /// full block, after `parent`) findable, and returns its hash. If an
    /// equal block is already cached (two sequences computed the same
    /// prefix), the existing one stays and this block is left out of the
    /// cache.
    pub fn register_full(&mut self, block: BlockId, parent: u64, index: usize, tokens: &[u32], global_spans: &[Range<usize>]) -> u64 {
        let spans = spans_within(global_spans, index * self.block_size..(index + 1) * self.block_size);
        let hash = block_hash(parent, tokens, &spans);
        if let std::collections::hash_map::Entry::Vacant(slot) = self.by_hash.entry(hash) {
            slot.insert(block);
            self.blocks[block as usize].cached = Some(CachedKey {
                hash,
                parent,
                tokens: tokens.to_vec(),
                spans,
            });
        }
        hash
    }

    /// Forgets every cached prefix (after the pool's contents were lost).
    pub fn clear_cache(&mut self) {
        self.by_hash.clear();
        for (_, b) in std::mem::take(&mut self.evictable) {
            self.free.push(b);
        }
        for meta in &mut self.blocks {
            meta.cached = None;
        }
    }
}

/// The block manager shared by the scheduler and the block tables it hands
/// out. (A mutex rather than a `RefCell`: sequences cross from the caller's
/// thread to the engine thread, so they must be `Send`; the lock is never
/// contended, only the engine thread takes it.)
#[derive(Clone)]
pub struct SharedBlocks(Arc<Mutex<BlockManager>>);

impl SharedBlocks {
    pub fn new(manager: BlockManager) -> Self {
        Self(Arc::new(Mutex::new(manager)))
    }

    /// Never hold the guard while a `BlockTable` is dropped: the drop locks too.
    pub fn lock(&self) -> MutexGuard<'_, BlockManager> {
        // A panic while locked leaves the counts as they were at the panic;
        // the engine carries on with them.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An empty table whose blocks go back to this manager when it is dropped.
    pub fn table(&self) -> BlockTable {
        BlockTable {
            ids: Vec::new(),
            owner: self.clone(),
        }
    }
}

/// A sequence's blocks in position order. Dropping the table releases them,
/// so a sequence that leaves for any reason (finished, cancelled, failed,
/// preempted) frees its memory. They are released tail first, as vLLM's
/// `free_blocks` does: the head of a cached prefix then has the newest
/// release time and is evicted last, so a chain is never cut at its head
/// while its tail still takes room in the cache.
pub struct BlockTable {
    ids: Vec<BlockId>,
    owner: SharedBlocks,
}

impl BlockTable {
    pub fn ids(&self) -> &[BlockId] {
        &self.ids
    }

    /// Takes ownership of one reference to `block`.
    pub fn push(&mut self, block: BlockId) {
        self.ids.push(block);
    }

    /// Gives the block at `index` back early (no query will read it again)
    /// and puts the null block in its place. A cached block stays findable
    /// for later requests with the same prefix until it is evicted.
    pub fn retire(&mut self, index: usize) {
        let mut manager = self.owner.lock();
        let Some(null) = manager.null_block else { return };
        let Some(slot) = self.ids.get_mut(index) else { return };
        let block = std::mem::replace(slot, null);
        if let Err(e) = manager.release(block) {
            debug_assert!(false, "{e}");
            tracing::error!("KV block bookkeeping: {e}");
        }
    }
}

impl Drop for BlockTable {
    fn drop(&mut self) {
        let mut manager = self.owner.lock();
        for b in self.ids.drain(..).rev() {
            if let Err(e) = manager.release(b) {
                debug_assert!(false, "{e}");
                tracing::error!("KV block bookkeeping: {e}");
            }
        }
    }
}

/// The parts of `spans` inside `block`, relative to its start.
fn spans_within(spans: &[Range<usize>], block: Range<usize>) -> Vec<Range<usize>> {
    spans
        .iter()
        .filter(|s| s.start < block.end && s.end > block.start)
        .map(|s| s.start.max(block.start) - block.start..s.end.min(block.end) - block.start)
        .collect()
}

fn block_hash(parent: u64, tokens: &[u32], spans: &[Range<usize>]) -> u64 {
    let mut h = DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    if !spans.is_empty() {
        spans.hash(&mut h);
    }
    // Keep ROOT_HASH for "no parent".
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Allocates and registers `tokens` as consecutive full blocks.
    fn cache_blocks(m: &mut BlockManager, tokens: &[u32]) -> Vec<BlockId> {
        cache_blocks_with_spans(m, tokens, &[])
    }

    fn cache_blocks_with_spans(m: &mut BlockManager, tokens: &[u32], spans: &[Range<usize>]) -> Vec<BlockId> {
        let mut parent = ROOT_HASH;
        let mut table = Vec::new();
        for (i, chunk) in tokens.chunks_exact(m.block_size()).enumerate() {
            let b = m.allocate().unwrap_or(BlockId::MAX);
            parent = m.register_full(b, parent, i, chunk, spans);
            table.push(b);
        }
        table
    }

    #[test]
    fn a_released_prefix_is_found_again_and_a_different_one_is_not() {
        let mut m = BlockManager::new(8, 2);
        let table = cache_blocks(&mut m, &[1, 2, 3, 4, 5, 6]);
        for b in table.into_iter().rev() {
            assert_eq!(m.release(b), Ok(()));
        }
        assert_eq!(m.num_available(), 8);
        let hit = m.match_prefix(&[1, 2, 3, 4, 9, 9], &[], 3);
        assert_eq!(hit.len(), 2);
        assert_eq!(m.num_used(), 2);
        // Same second block after a different first block: no match.
        assert!(m.match_prefix(&[7, 7, 3, 4], &[], 2).is_empty());
    }

    #[test]
    fn eviction_takes_free_blocks_first_then_the_least_recently_released() {
        let mut m = BlockManager::new(3, 1);
        let a = cache_blocks(&mut m, &[10]);
        let b = cache_blocks(&mut m, &[20]);
        assert_eq!(m.release(a[0]), Ok(()));
        assert_eq!(m.release(b[0]), Ok(()));
        let fresh = m.allocate();
        assert!(fresh.is_some() && fresh != Some(a[0]) && fresh != Some(b[0]));
        // Next allocation evicts a (released first); b stays findable.
        assert_eq!(m.allocate(), Some(a[0]));
        assert!(m.match_prefix(&[10], &[], 1).is_empty());
        assert_eq!(m.match_prefix(&[20], &[], 1).len(), 1);
        assert_eq!(m.allocate(), None);
    }

    #[test]
    fn a_dropped_table_gives_its_blocks_back() {
        let shared = SharedBlocks::new(BlockManager::new(4, 2));
        let mut table = shared.table();
        for _ in 0..3 {
            let b = shared.lock().allocate();
            table.push(b.unwrap_or(BlockId::MAX));
        }
        assert_eq!(shared.lock().num_used(), 3);
        drop(table);
        assert_eq!(shared.lock().num_used(), 0);
    }

    #[test]
    fn shared_blocks_are_freed_only_by_their_last_reference() {
        let mut m = BlockManager::new(2, 1);
        let t = cache_blocks(&mut m, &[5]);
        let shared = m.match_prefix(&[5], &[], 1);
        assert_eq!(shared[0].0, t[0]);
        assert_eq!(m.release(t[0]), Ok(()));
        assert_eq!(m.num_used(), 1);
        assert_eq!(m.release(t[0]), Ok(()));
        assert_eq!(m.num_used(), 0);
    }

    #[test]
    fn a_double_free_is_refused_and_the_block_is_handed_out_once() {
        let mut m = BlockManager::new(2, 1);
        let b = m.allocate().unwrap_or(BlockId::MAX);
        assert_eq!(m.release(b), Ok(()));
        assert_eq!(m.release(b), Err(BlockError::DoubleFree(b)));
        let first = m.allocate();
        let second = m.allocate();
        assert!(first.is_some() && second.is_some() && first != second);
        assert_eq!(m.allocate(), None);
    }

    #[test]
    fn allocate_n_takes_all_or_nothing() {
        let mut m = BlockManager::new(3, 1);
        assert_eq!(m.allocate_n(4), Err(BlockError::Exhausted { needed: 4, available: 3 }));
        assert_eq!(m.num_used(), 0);
        assert_eq!(m.allocate_n(3).map(|v| v.len()), Ok(3));
    }

    /// Regression: tables used to release head first, so the head of a
    /// cached chain was evicted first and the whole chain became unreachable.
    #[test]
    fn eviction_keeps_the_head_of_a_released_prefix() {
        let shared = SharedBlocks::new(BlockManager::new(4, 1));
        let mut table = shared.table();
        let mut parent = ROOT_HASH;
        for (i, t) in [1, 2, 3, 4].into_iter().enumerate() {
            let b = shared.lock().allocate().unwrap_or(BlockId::MAX);
            parent = shared.lock().register_full(b, parent, i, &[t], &[]);
            table.push(b);
        }
        drop(table);
        // Two new blocks evict two cached ones: the tail's.
        let taken = shared.lock().allocate_n(2);
        assert!(taken.is_ok());
        let mut m = shared.lock();
        let hit = m.match_prefix(&[1, 2, 3, 4], &[], 4);
        assert_eq!(hit.len(), 2, "the first two blocks of the prefix stay findable");
    }

    /// Spans change what later positions attend to, so a prefix computed
    /// under other spans is not reused; blocks before the first difference are.
    #[test]
    fn global_spans_are_part_of_a_prefix() {
        let mut m = BlockManager::new(8, 2);
        let tokens = [1, 2, 3, 4, 5, 6];
        let table = cache_blocks_with_spans(&mut m, &tokens, &[3..4]);
        for b in table {
            assert!(m.release(b).is_ok());
        }
        assert_eq!(m.match_prefix(&tokens, &[3..4], 3).len(), 3, "same spans: the whole prefix");
        assert_eq!(m.match_prefix(&tokens, &[], 3).len(), 1, "no spans: only the block before the span");
        assert_eq!(m.match_prefix(&tokens, &[2..4], 3).len(), 1, "a span starting earlier");
        assert_eq!(m.match_prefix(&tokens, &[3..4, 5..6], 3).len(), 2, "a later span adds from its block on");
    }
}
