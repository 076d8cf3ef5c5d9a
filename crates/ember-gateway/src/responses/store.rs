//! Stored responses: what `previous_response_id` continues and
//! `GET`/`DELETE /v1/responses/{id}` read. In memory, bounded in number
//! (the oldest goes first) and in age, so a busy server's memory stays flat.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A finished response and the conversation it closes.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The response object as `GET` returns it.
    pub response: Value,
    /// Chat messages up to and including this response's answer, without
    /// `instructions` (OpenAI does not carry them over to the next turn).
    pub conversation: Vec<Value>,
}

pub struct ResponseStore {
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, (Instant, Stored)>,
    /// Ids (unique, random) oldest first; a deleted one stays until it
    /// comes up, and the list is held to twice the capacity.
    order: VecDeque<String>,
}

impl ResponseStore {
    /// Keeps at most `capacity` responses (0 keeps none), each for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            capacity,
            ttl,
            inner: Mutex::new(Entries::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    pub fn insert(&self, id: String, stored: Stored) {
        if !self.enabled() {
            return;
        }
        let Ok(mut entries) = self.inner.lock() else { return };
        let now = Instant::now();
        entries.order.push_back(id.clone());
        entries.by_id.insert(id, (now, stored));
        while entries.by_id.len() > self.capacity || entries.order.len() > 2 * self.capacity {
            let Some(oldest) = entries.order.pop_front() else { break };
            entries.by_id.remove(&oldest);
        }
    }

    /// The response under `id`, unless it is unknown or expired.
    pub fn get(&self, id: &str) -> Option<Stored> {
        let mut entries = self.inner.lock().ok()?;
        let (at, stored) = entries.by_id.get(id)?;
        if at.elapsed() <= self.ttl {
            return Some(stored.clone());
        }
        entries.by_id.remove(id);
        None
    }

    /// Whether `id` was there to delete.
    pub fn remove(&self, id: &str) -> bool {
        let Ok(mut entries) = self.inner.lock() else { return false };
        entries.by_id.remove(id).is_some_and(|(at, _)| at.elapsed() <= self.ttl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(n: u64) -> Stored {
        Stored {
            response: Value::from(n),
            conversation: Vec::new(),
        }
    }

    #[test]
    fn the_oldest_goes_when_full_and_old_ones_expire() {
        let store = ResponseStore::new(2, Duration::from_secs(60));
        for n in 0..3 {
            store.insert(format!("resp_{n}"), stored(n));
        }
        assert!(store.get("resp_0").is_none());
        assert_eq!(store.get("resp_2").map(|s| s.response), Some(Value::from(2)));
        assert!(store.remove("resp_1"));
        assert!(!store.remove("resp_1"));
        store.insert("resp_3".into(), stored(3));
        store.insert("resp_4".into(), stored(4));
        assert!(store.get("resp_2").is_none() && store.get("resp_3").is_some() && store.get("resp_4").is_some());

        let expiring = ResponseStore::new(2, Duration::ZERO);
        expiring.insert("resp_0".into(), stored(0));
        std::thread::sleep(Duration::from_millis(2));
        assert!(expiring.get("resp_0").is_none());
    }

    #[test]
    fn a_store_of_size_zero_keeps_nothing() {
        let store = ResponseStore::new(0, Duration::from_secs(60));
        store.insert("resp_0".into(), stored(0));
        assert!(store.get("resp_0").is_none());
    }
}
