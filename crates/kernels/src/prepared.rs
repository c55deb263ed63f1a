//! Filters prepared once per set of weights for inference: the bfloat16 panels a convolution's
//! products read (and Winograd's transformed filters), kept between calls instead of made again
//! for every batch.
//!
//! Why: a served model's weights do not change between requests, yet every forward packed them
//! again — in bfloat16 ~4 % of ResNet-50's inference at 112 px, batch 16, and ~12 % of
//! ResNet-18's at batch 1, where each packed value is used for as few multiply-adds as the output
//! plane has pixels (docs/PERFORMANCE.md, Change 23).
//!
//! What makes a cache keyed by the weights' address sound: an entry holds a reference to the
//! storage the weights live in ([`WeightsOwner`]), so that storage is neither freed (no later
//! tensor can be allocated at the same address while the entry lives) nor written — burn's flex
//! backend writes a tensor's storage in place only when nothing else references it. The same
//! address and length therefore mean the same values for as long as the entry exists. Entries
//! whose storage nothing else references any more (the model was dropped, or a training step
//! replaced the weights) are dropped at the next insertion, or by [`drop_unused`] (which a
//! training run calls as it ends); beyond [`CAPACITY_BYTES`] the least recently used weights'
//! entries go too.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Bytes of prepared filters kept at most (about ten ResNet-50s in bfloat16).
const CAPACITY_BYTES: usize = 512 << 20;

/// The storage a convolution's weights are a slice of, held by the entries prepared from them.
#[derive(Clone)]
pub(crate) struct WeightsOwner {
    storage: Arc<dyn Any + Send + Sync>,
    /// The storage's bytes: where the weights must lie.
    bytes: std::ops::Range<usize>,
}

impl WeightsOwner {
    /// `storage`, whose bytes are `bytes` (their addresses), as the owner of weights that lie in it.
    ///
    /// The caller promises that `storage` is written only while nothing else references it (the
    /// contract of flex's shared tensor storage), which is what keeps an entry's weights intact.
    pub(crate) fn new(storage: Arc<dyn Any + Send + Sync>, bytes: &[u8]) -> WeightsOwner {
        let start = bytes.as_ptr() as usize;
        WeightsOwner { storage, bytes: start..start + bytes.len() }
    }

    fn holds(&self, weight: &[f32]) -> bool {
        let start = weight.as_ptr() as usize;
        self.bytes.start <= start && start + std::mem::size_of_val(weight) <= self.bytes.end
    }
}

/// What was prepared from a convolution's weights (with the shape it was prepared for, so that
/// the same weights read as another shape never share an entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Preparation {
    /// Filters in blocks of input channels (`all_channels`: one block), packed for bfloat16
    /// products: `m` output channels, `k` values (input channels × taps) per filter.
    Blocks { m: usize, k: usize, all_channels: bool },
    /// Output channels `first..first + m` of the filters, all `k` values each, packed likewise.
    Rows { first: usize, m: usize, k: usize },
    /// Winograd's transformed filters, and their points packed for bfloat16 products.
    Winograd { out_channels: usize, in_channels: usize },
}

/// One set of weights' prepared filters.
struct Entry {
    owner: WeightsOwner,
    prepared: HashMap<Preparation, (Arc<dyn Any + Send + Sync>, usize)>,
    bytes: usize,
    last_use: u64,
}

#[derive(Default)]
struct Cache {
    /// By the weights' address and length.
    entries: HashMap<(usize, usize), Entry>,
    bytes: usize,
    clock: u64,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// `what` for `weight` (a slice of `owner`'s storage), prepared by `make` (the value and its size
/// in bytes) unless an earlier call left it in the cache.
pub(crate) fn prepared<T: Any + Send + Sync>(
    owner: &WeightsOwner,
    weight: &[f32],
    what: Preparation,
    make: impl FnOnce() -> (T, usize),
) -> Arc<T> {
    assert!(owner.holds(weight), "weights outside the storage given as their owner");
    let key = (weight.as_ptr() as usize, weight.len());
    {
        let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let cache = cache.get_or_insert_with(Cache::default);
        cache.clock += 1;
        let clock = cache.clock;
        if let Some(entry) = cache.entries.get_mut(&key) {
            // The entry's storage is alive, so no other storage can hold these addresses.
            debug_assert!(Arc::ptr_eq(&entry.owner.storage, &owner.storage));
            entry.last_use = clock;
            if let Some((value, _)) = entry.prepared.get(&what)
                && let Ok(value) = Arc::clone(value).downcast::<T>()
            {
                return value;
            }
        }
    }
    // Prepared outside the lock: it runs on the rayon pool, and other convolutions may look up
    // theirs meanwhile. Two threads preparing the same filters at once both keep their own.
    let (value, bytes) = make();
    let value = Arc::new(value);
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let cache = cache.get_or_insert_with(Cache::default);
    cache.clock += 1;
    let clock = cache.clock;
    let entry = cache.entries.entry(key).or_insert_with(|| Entry {
        owner: owner.clone(),
        prepared: HashMap::new(),
        bytes: 0,
        last_use: clock,
    });
    entry.last_use = clock;
    let shared: Arc<dyn Any + Send + Sync> = value.clone();
    if let Some((_, replaced)) = entry.prepared.insert(what, (shared, bytes)) {
        entry.bytes -= replaced;
        cache.bytes -= replaced;
    }
    entry.bytes += bytes;
    cache.bytes += bytes;
    cache.evict(Some(key));
    value
}

/// Drops the prepared filters of weights nothing else holds any more. Entries are otherwise
/// dropped only as others are added: a bfloat16 training run's last evaluation would leave its
/// weights (and their packing) in memory until the process's next bfloat16 inference.
pub fn drop_unused() {
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(cache) = cache.as_mut() {
        cache.evict(None);
    }
}

impl Cache {
    /// Drops the entries of weights nothing else holds any more, then the least recently used
    /// ones (other than `keep`'s, just used) while over [`CAPACITY_BYTES`].
    fn evict(&mut self, keep: Option<(usize, usize)>) {
        // Each entry holds one reference to its storage (several weights may share one).
        let mut entries_per_storage: HashMap<*const (), usize> = HashMap::new();
        for entry in self.entries.values() {
            *entries_per_storage.entry(Arc::as_ptr(&entry.owner.storage).cast()).or_default() += 1;
        }
        let mut freed = 0;
        self.entries.retain(|_, entry| {
            let own = entries_per_storage[&Arc::as_ptr(&entry.owner.storage).cast()];
            let alive = Arc::strong_count(&entry.owner.storage) > own;
            if !alive {
                freed += entry.bytes;
            }
            alive
        });
        self.bytes -= freed;
        while self.bytes > CAPACITY_BYTES {
            let oldest =
                self.entries.iter().filter(|(key, _)| Some(**key) != keep).min_by_key(|(_, entry)| entry.last_use);
            let Some((&key, _)) = oldest else { break };
            let entry = self.entries.remove(&key).expect("just found");
            self.bytes -= entry.bytes;
        }
    }
}

/// Whether filters prepared from the weights at `address` with `len` values are in the cache.
#[cfg(test)]
pub(crate) fn is_cached(address: usize, len: usize) -> bool {
    let cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    cache.as_ref().is_some_and(|cache| cache.entries.contains_key(&(address, len)))
}
