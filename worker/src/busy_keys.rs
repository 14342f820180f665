//! Which fairness keys this worker spent its capacity on lately: jobs started per key over
//! the last [`WINDOW_SECONDS`] seconds, reported with each heartbeat (the busiest
//! [`REPORTED`]) so the dashboard can show the busiest keys across all workers.
//!
//! Bounded whatever the number of keys: each one-second bucket counts at most
//! [`MAX_KEYS_PER_SECOND`] distinct keys (jobs of further keys are counted under
//! [`OTHER_KEYS`]), and only [`WINDOW_SECONDS`] buckets are kept.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use surge_common::storage::heartbeat::KeyLoad;

/// Seconds of history the report covers (one bucket per heartbeat).
pub const WINDOW_SECONDS: usize = 10;
/// Distinct keys counted per bucket; later keys go to [`OTHER_KEYS`].
pub const MAX_KEYS_PER_SECOND: usize = 1_000;
/// Keys reported per heartbeat.
pub const REPORTED: usize = 10;
/// The name jobs of uncounted keys are reported under.
pub const OTHER_KEYS: &str = "(other keys)";

/// Jobs started per key, per second, for the last [`WINDOW_SECONDS`] seconds.
#[derive(Debug, Default)]
pub struct BusyKeys {
    buckets: Mutex<Buckets>,
}

#[derive(Debug, Default)]
struct Buckets {
    current: HashMap<String, u64>,
    past: VecDeque<HashMap<String, u64>>,
}

impl BusyKeys {
    /// Counts one job of `key` started now.
    pub fn started(&self, key: &str) {
        let mut buckets = self.lock();
        let current = &mut buckets.current;
        if let Some(count) = current.get_mut(key) {
            *count += 1;
        } else if current.len() < MAX_KEYS_PER_SECOND {
            current.insert(key.to_owned(), 1);
        } else {
            *current.entry(OTHER_KEYS.to_owned()).or_default() += 1;
        }
    }

    /// Closes the current second and returns the busiest keys of the window, most jobs
    /// first (ties by key), at most [`REPORTED`]. Called once per heartbeat.
    pub fn rotate(&self) -> Vec<KeyLoad> {
        let mut buckets = self.lock();
        let closed = std::mem::take(&mut buckets.current);
        buckets.past.push_back(closed);
        while buckets.past.len() > WINDOW_SECONDS {
            buckets.past.pop_front();
        }
        let counts = buckets
            .past
            .iter()
            .flat_map(|bucket| bucket.iter().map(|(key, n)| (key.as_str(), *n)));
        KeyLoad::busiest(counts, REPORTED)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // Counters only: a panic elsewhere cannot leave them harmful.
        self.buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_busiest_keys_of_the_window_first() {
        let keys = BusyKeys::default();
        for _ in 0..5 {
            keys.started("a");
        }
        keys.started("b");
        keys.rotate();
        for _ in 0..3 {
            keys.started("b");
        }
        let report = keys.rotate();
        let pairs: Vec<(&str, u64)> = report.iter().map(|l| (l.key.as_str(), l.started)).collect();
        assert_eq!(pairs, [("a", 5), ("b", 4)]);
    }

    #[test]
    fn forgets_seconds_older_than_the_window() {
        let keys = BusyKeys::default();
        keys.started("old");
        keys.rotate();
        for _ in 0..WINDOW_SECONDS {
            keys.started("new");
            keys.rotate();
        }
        let report = keys.rotate();
        assert!(report.iter().all(|l| l.key != "old"), "{report:?}");
        assert_eq!(report[0].started, WINDOW_SECONDS as u64 - 1);
    }

    #[test]
    fn many_keys_stay_bounded_and_are_counted_as_other() {
        let keys = BusyKeys::default();
        for i in 0..MAX_KEYS_PER_SECOND + 500 {
            keys.started(&format!("k{i}"));
        }
        assert_eq!(keys.lock().current.len(), MAX_KEYS_PER_SECOND + 1);
        let report = keys.rotate();
        assert_eq!(report.len(), REPORTED);
        assert_eq!(report[0].key, OTHER_KEYS);
        assert_eq!(report[0].started, 500);
    }
}
