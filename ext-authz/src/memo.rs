//! A memo within a bound, for what is never stale, only costly to work out again.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, RandomState};
use std::sync::Mutex;

/// A map that stays within a bound: parsed peer
/// certificates (by the SHA-256 of their encoded form, 32 bytes per key rather than the kilobyte of PEM;
/// whom a certificate names never changes, and revocation is checked against the directory on every
/// request, not here) and decisions (by their facts, see [`crate::input::Facts`]). Each shard keeps two generations:
/// entries go into the current one, and when it is full it becomes the previous one, dropping the
/// one before. An entry found in the previous generation moves to the current one, so what is in use
/// stays and the rest ages out (forgetting an arbitrary entry instead would, in a full map, often
/// forget the one just added).
pub struct Bounded<K, V> {
    shards: Vec<Mutex<Generations<K, V>>>,
    per_generation: usize,
    hasher: RandomState,
}

struct Generations<K, V> {
    current: HashMap<K, V>,
    previous: HashMap<K, V>,
}

impl<K: Hash + Eq, V: Clone> Generations<K, V> {
    fn insert(&mut self, key: K, value: V, per_generation: usize) {
        if self.current.len() >= per_generation && !self.current.contains_key(&key) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(key, value);
    }
}

impl<K: Hash + Eq, V: Clone> Bounded<K, V> {
    const SHARDS: usize = 16;

    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..Self::SHARDS)
                .map(|_| {
                    Mutex::new(Generations {
                        current: HashMap::new(),
                        previous: HashMap::new(),
                    })
                })
                .collect(),
            per_generation: capacity.div_ceil(Self::SHARDS * 2).max(1),
            hasher: RandomState::new(),
        }
    }

    fn shard(&self, key: &K) -> std::sync::MutexGuard<'_, Generations<K, V>> {
        let index = self.hasher.hash_one(key) as usize % Self::SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let mut shard = self.shard(key);
        if let Some(value) = shard.current.get(key) {
            return Some(value.clone());
        }
        let (key, value) = shard.previous.remove_entry(key)?;
        shard.insert(key, value.clone(), self.per_generation);
        Some(value)
    }

    pub fn insert(&self, key: K, value: V) {
        self.shard(&key).insert(key, value, self.per_generation);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let shard = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                shard.current.len() + shard.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full map still keeps what is in use: sixteen devices, each repeating its request ten times
    /// a second (new facts every second), after a burst of entries never used again.
    #[test]
    fn a_full_bounded_map_keeps_the_entries_in_use() {
        let memo: Bounded<(u64, u64), u64> = Bounded::new(4096);
        for stale in 0..10_000u64 {
            memo.insert((1_000_000 + stale, 0), 0);
        }
        let mut misses = 0;
        for second in 0..200u64 {
            for _ in 0..10 {
                for device in 0..16u64 {
                    if memo.get(&(second, device)).is_none() {
                        misses += 1;
                        memo.insert((second, device), 1);
                    }
                }
            }
        }
        // One miss per device and second: the first request of each second.
        assert_eq!(misses, 200 * 16);
        assert!(memo.len() <= 4096, "{} entries", memo.len());
    }

    #[test]
    fn a_bounded_map_stays_within_its_bound() {
        let cache = Bounded::new(64);
        for i in 0..1000u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[0] = (i % 256) as u8;
            cache.insert(key, format!("pi-{i}"));
            assert_eq!(cache.get(&key), Some(format!("pi-{i}")));
        }
        assert!(cache.len() <= 64, "{} entries", cache.len());
        let mut same = [7u8; 32];
        cache.insert(same, "a".to_owned());
        cache.insert(same, "b".to_owned());
        assert_eq!(cache.get(&same), Some("b".to_owned()));
        same[31] = 8;
        assert!(cache.get(&same).is_none());
    }
}
