//! The order a worker starts the jobs it holds: fair across keys, higher priorities first,
//! aged so that no job waits forever.
//!
//! A worker holds more deliveries than it runs (the broker's prefetch per queue; with
//! RabbitMQ's key-hashed sub-queues, one prefetch window per sub-queue). When a slot frees
//! up, [`FairQueue::pop`] picks the next job:
//!
//! 1. **Priority level** (1 to 5): the highest *effective* priority among the levels that
//!    hold jobs, where a level's effective priority is its own plus one for every
//!    [`AGING_STEP`] that the job next in line there has waited. A priority-1 job
//!    waiting 10 s beats a fresh priority-3 one (with a 5 s step), so a flood of high
//!    priorities delays a low one, never starves it. Ties go to the higher level.
//! 2. **Key** within the level: round robin over the keys that have jobs (a job without a
//!    key is a group of its own). A key with a 5,000-job backlog gets one turn per round
//!    like a key with one job, so the latter waits about one job time per key ahead of it.
//! 3. **Arrival** within the key: first in, first out.
//!
//! Memory is one entry per held job plus one per key with held jobs: bounded by what the
//! broker delivers ahead (its prefetch), whatever the number of keys overall.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// How long a waiting job takes to gain one priority level.
pub const AGING_STEP: Duration = Duration::from_secs(5);

/// Number of priority levels (1 to 5).
const LEVELS: usize = surge_common::job::MAX_PRIORITY as usize;

/// Held items of one priority level, round robin over keys.
#[derive(Debug)]
struct Level<T> {
    by_key: HashMap<String, VecDeque<(Instant, T)>>,
    /// Keys with held items, in turn order: the front key goes next.
    turns: VecDeque<String>,
}

impl<T> Default for Level<T> {
    fn default() -> Self {
        Level {
            by_key: HashMap::new(),
            turns: VecDeque::new(),
        }
    }
}

impl<T> Level<T> {
    /// When the item next in line here arrived.
    fn next_arrival(&self) -> Option<Instant> {
        let key = self.turns.front()?;
        self.by_key.get(key)?.front().map(|(at, _)| *at)
    }

    fn pop(&mut self) -> Option<T> {
        let key = self.turns.pop_front()?;
        let queue = self.by_key.get_mut(&key)?;
        let (_, item) = queue.pop_front()?;
        if queue.is_empty() {
            self.by_key.remove(&key);
        } else {
            self.turns.push_back(key);
        }
        Some(item)
    }
}

/// Held jobs in the order a worker should start them; see the module docs.
#[derive(Debug)]
pub struct FairQueue<T> {
    levels: Vec<Level<T>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        FairQueue {
            levels: (0..LEVELS).map(|_| Level::default()).collect(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Holds `item` of fairness group `key` at `priority` (clamped to 1..=5), arrived `at`.
    pub fn push(&mut self, key: &str, priority: u8, at: Instant, item: T) {
        let index = usize::from(priority.clamp(1, LEVELS as u8)) - 1;
        let level = &mut self.levels[index];
        match level.by_key.get_mut(key) {
            Some(queue) => queue.push_back((at, item)),
            None => {
                level
                    .by_key
                    .insert(key.to_owned(), VecDeque::from([(at, item)]));
                level.turns.push_back(key.to_owned());
            }
        }
        self.len += 1;
    }

    /// The next item to start at `now`, if any is held.
    pub fn pop(&mut self, now: Instant) -> Option<T> {
        let step = AGING_STEP.as_secs_f64();
        let best = self
            .levels
            .iter()
            .enumerate()
            .filter_map(|(index, level)| {
                let waited = now.saturating_duration_since(level.next_arrival()?);
                let effective = (index + 1) as f64 + (waited.as_secs_f64() / step).floor();
                Some((effective, index))
            })
            // Highest effective priority; on a tie the higher level.
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))?;
        let item = self.levels[best.1].pop()?;
        self.len -= 1;
        Some(item)
    }

    /// Items held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Distinct keys with held items (over all levels; a key at two levels counts twice).
    pub fn keys(&self) -> usize {
        self.levels.iter().map(|l| l.by_key.len()).sum()
    }

    /// Removes and returns everything held (e.g. to release it at shutdown).
    pub fn drain(&mut self) -> Vec<T> {
        let mut out = Vec::with_capacity(self.len);
        for level in &mut self.levels {
            level.turns.clear();
            for (_, queue) in level.by_key.drain() {
                out.extend(queue.into_iter().map(|(_, item)| item));
            }
        }
        self.len = 0;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_order(q: &mut FairQueue<String>, now: Instant) -> Vec<String> {
        std::iter::from_fn(|| q.pop(now)).collect()
    }

    #[test]
    fn a_small_key_is_not_held_up_by_a_big_backlog() {
        let now = Instant::now();
        let mut q = FairQueue::default();
        for i in 0..1000 {
            q.push("A", 3, now, format!("A{i}"));
        }
        for i in 0..3 {
            q.push("B", 3, now, format!("B{i}"));
        }
        assert_eq!(q.len(), 1003);
        assert_eq!(q.keys(), 2);
        let order = drain_order(&mut q, now);
        let last_b = order.iter().rposition(|x| x.starts_with('B')).unwrap();
        assert_eq!(last_b, 5, "A0 B0 A1 B1 A2 B2: {:?}", &order[..8]);
        // Within a key, arrival order.
        let a: Vec<&String> = order.iter().filter(|x| x.starts_with('A')).collect();
        assert_eq!(a[0], "A0");
        assert_eq!(a[999], "A999");
        assert!(q.is_empty());
        assert_eq!(q.keys(), 0);
    }

    #[test]
    fn many_keys_each_get_a_turn() {
        let now = Instant::now();
        let mut q = FairQueue::default();
        for i in 0..50_000 {
            q.push("big", 3, now, i);
        }
        for k in 0..10_000 {
            q.push(&format!("k{k}"), 3, now, 100_000 + k);
        }
        let first: Vec<usize> = (0..20_000).map(|_| q.pop(now).unwrap()).collect();
        assert_eq!(
            first.iter().filter(|x| **x >= 100_000).count(),
            10_000,
            "every one-job key within the first two rounds"
        );
    }

    #[test]
    fn higher_priorities_go_first() {
        let now = Instant::now();
        let mut q = FairQueue::default();
        for i in 0..5 {
            q.push("t", 1, now, format!("low{i}"));
            q.push("t", 5, now, format!("high{i}"));
            q.push("t", 3, now, format!("mid{i}"));
        }
        let order = drain_order(&mut q, now);
        assert!(
            order[..5].iter().all(|x| x.starts_with("high")),
            "{order:?}"
        );
        assert!(
            order[5..10].iter().all(|x| x.starts_with("mid")),
            "{order:?}"
        );
        assert!(
            order[10..].iter().all(|x| x.starts_with("low")),
            "{order:?}"
        );
    }

    #[test]
    fn a_waiting_low_priority_is_never_starved() {
        let start = Instant::now();
        let mut q = FairQueue::default();
        q.push("t", 1, start, "old-low".to_owned());
        // Fresh high-priority work keeps arriving; the low one ages.
        let mut now = start;
        for i in 0..100 {
            now += Duration::from_millis(500);
            q.push("t", 3, now, format!("mid{i}"));
            let next = q.pop(now).unwrap();
            if next == "old-low" {
                let waited = now - start;
                // Level 1 has to gain more than the gap to level 3 (a tie goes to the
                // higher level): 3 steps.
                assert!(waited >= AGING_STEP * 3, "served after {waited:?}");
                assert!(
                    waited < AGING_STEP * 3 + Duration::from_secs(1),
                    "{waited:?}"
                );
                return;
            }
        }
        panic!("the low-priority job was starved");
    }

    #[test]
    fn out_of_range_priorities_are_clamped_and_drain_returns_everything() {
        let now = Instant::now();
        let mut q = FairQueue::default();
        q.push("a", 0, now, 1);
        q.push("a", 200, now, 2);
        q.push("b", 3, now, 3);
        assert_eq!(q.pop(now), Some(2), "200 counts as 5");
        let mut rest = q.drain();
        rest.sort_unstable();
        assert_eq!(rest, vec![1, 3]);
        assert!(q.is_empty());
        assert_eq!(q.pop(now), None);
    }
}
