//! Which offset of each partition may be committed.
//!
//! Deliveries of one partition are settled in any order (a worker runs up to `prefetch` jobs
//! at once, more than there are partitions), but Kafka keeps one committed offset per
//! partition: "everything below this is done". Committing the offset of a job settled early
//! would skip the unsettled jobs before it after a crash. So the tracker records, per
//! partition, every offset handed out and whether it is settled, and only ever offers the
//! *low watermark*: one past the highest offset below which every delivered offset is
//! settled.
//!
//! Offsets the consumer never saw (gaps left by compaction or transaction markers) do not
//! hold the watermark back: the tracker only knows offsets that were delivered, and a
//! partition is delivered in offset order.
//!
//! Each assignment of a partition gets a fresh *generation*. A settle from an earlier
//! generation (the partition was revoked, its unsettled jobs go to the new owner) is
//! ignored, so it can never move a later assignment's watermark.

use std::collections::{BTreeMap, HashMap};

/// A topic and partition.
pub(crate) type TopicPartition = (String, i32);

/// Delivered offsets of one partition, for one generation.
#[derive(Debug, Default)]
struct PartitionTrack {
    generation: u64,
    /// Offsets delivered and not yet folded into `watermark`; `true` once settled.
    outstanding: BTreeMap<i64, bool>,
    /// Next offset to consume: every delivered offset below it is settled.
    watermark: Option<i64>,
    /// The watermark last handed out for committing.
    committed: Option<i64>,
}

impl PartitionTrack {
    /// Folds the settled prefix of `outstanding` into the watermark.
    fn advance(&mut self) {
        while let Some(entry) = self.outstanding.first_entry() {
            if !*entry.get() {
                break;
            }
            let offset = *entry.key();
            entry.remove();
            self.watermark = Some(offset + 1);
        }
    }

    fn uncommitted(&self) -> Option<i64> {
        match (self.watermark, self.committed) {
            (Some(w), Some(c)) if w <= c => None,
            (w, _) => w,
        }
    }
}

/// Per-partition settle tracking; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct OffsetTracker {
    partitions: HashMap<TopicPartition, PartitionTrack>,
    last_generation: u64,
}

impl OffsetTracker {
    fn fresh(&mut self) -> PartitionTrack {
        self.last_generation += 1;
        PartitionTrack {
            generation: self.last_generation,
            ..PartitionTrack::default()
        }
    }

    /// The partition was (re)assigned: start a new generation with nothing outstanding.
    ///
    /// A partition already tracked keeps its generation. That happens when its first
    /// messages were read before the assign callback ran (`delivered` tracks them then):
    /// librdkafka starts fetching inside its assign, and the callback runs after it.
    /// Starting a new generation there would orphan those deliveries — a job still queued
    /// would be dropped as "revoked", and librdkafka never sends it again while it keeps
    /// the partition. A real reassignment always comes after a revoke, which forgets the
    /// partition, so it still gets a fresh generation.
    pub(crate) fn assign(&mut self, tp: TopicPartition) -> u64 {
        if let Some(track) = self.partitions.get(&tp) {
            return track.generation;
        }
        let track = self.fresh();
        let generation = track.generation;
        self.partitions.insert(tp, track);
        generation
    }

    /// The partition was revoked: forget it, returning the watermark still to be committed
    /// (if any). Unsettled offsets are not committed: the next owner delivers them again.
    pub(crate) fn revoke(&mut self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.remove(tp)?.uncommitted()
    }

    /// `offset` of `tp` was handed out; returns the generation its settle must quote.
    pub(crate) fn delivered(&mut self, tp: &TopicPartition, offset: i64) -> u64 {
        if !self.partitions.contains_key(tp) {
            self.assign(tp.clone());
        }
        let track = self
            .partitions
            .get_mut(tp)
            .expect("the partition was inserted just above");
        if track.watermark.is_none_or(|w| offset >= w) {
            track.outstanding.entry(offset).or_insert(false);
        }
        track.generation
    }

    /// Whether deliveries of `generation` still belong to this consumer's assignment.
    pub(crate) fn is_current(&self, tp: &TopicPartition, generation: u64) -> bool {
        self.partitions
            .get(tp)
            .is_some_and(|t| t.generation == generation)
    }

    /// `offset` of `tp` is settled. Returns whether the watermark moved. A settle from an
    /// older generation, or of an offset not outstanding, changes nothing.
    pub(crate) fn settle(&mut self, tp: &TopicPartition, generation: u64, offset: i64) -> bool {
        let Some(track) = self.partitions.get_mut(tp) else {
            return false;
        };
        if track.generation != generation {
            return false;
        }
        match track.outstanding.get_mut(&offset) {
            Some(settled) if !*settled => *settled = true,
            _ => return false,
        }
        let before = track.watermark;
        track.advance();
        track.watermark != before
    }

    /// The watermark of `tp` (next offset to consume), if any offset was settled.
    #[cfg(test)]
    pub(crate) fn watermark(&self, tp: &TopicPartition) -> Option<i64> {
        self.partitions.get(tp)?.watermark
    }

    /// Watermarks that moved since they were last taken, marked as committed. If the commit
    /// then fails, call [`OffsetTracker::commit_failed`].
    pub(crate) fn take_commits(&mut self) -> Vec<(TopicPartition, i64)> {
        let mut out = Vec::new();
        for (tp, track) in &mut self.partitions {
            if let Some(offset) = track.uncommitted() {
                track.committed = Some(offset);
                out.push((tp.clone(), offset));
            }
        }
        out
    }

    /// Committing `offset` for `tp` failed: offer the watermark again next time.
    pub(crate) fn commit_failed(&mut self, tp: &TopicPartition, offset: i64) {
        if let Some(track) = self.partitions.get_mut(tp) {
            if track.committed == Some(offset) {
                track.committed = None;
            }
        }
    }

    /// Deliveries handed out and not yet settled, over all partitions.
    #[cfg(test)]
    pub(crate) fn unsettled(&self) -> usize {
        self.partitions
            .values()
            .map(|t| t.outstanding.values().filter(|s| !**s).count())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: i32) -> TopicPartition {
        ("jobs".to_owned(), p)
    }

    #[test]
    fn watermark_waits_for_the_lowest_unsettled_offset() {
        let mut t = OffsetTracker::default();
        let g = t.assign(tp(0));
        for offset in 10..15 {
            assert_eq!(t.delivered(&tp(0), offset), g);
        }
        // Settled out of order: 12, 14, 11 — offset 10 still holds everything back.
        assert!(!t.settle(&tp(0), g, 12));
        assert!(!t.settle(&tp(0), g, 14));
        assert!(!t.settle(&tp(0), g, 11));
        assert_eq!(t.watermark(&tp(0)), None);
        assert!(t.take_commits().is_empty());
        // 10 settles: the watermark jumps over 11 and 12 and stops at unsettled 13.
        assert!(t.settle(&tp(0), g, 10));
        assert_eq!(t.watermark(&tp(0)), Some(13));
        assert_eq!(t.take_commits(), vec![(tp(0), 13)]);
        assert_eq!(t.unsettled(), 1);
        assert!(t.settle(&tp(0), g, 13));
        assert_eq!(t.take_commits(), vec![(tp(0), 15)]);
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_the_watermark_back() {
        let mut t = OffsetTracker::default();
        let g = t.delivered(&tp(1), 3);
        t.delivered(&tp(1), 7);
        assert!(t.settle(&tp(1), g, 3));
        assert!(t.settle(&tp(1), g, 7));
        assert_eq!(t.watermark(&tp(1)), Some(8));
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::default();
        let g0 = t.delivered(&tp(0), 0);
        let g1 = t.delivered(&tp(1), 0);
        t.delivered(&tp(1), 1);
        assert!(!t.settle(&tp(1), g1, 1));
        assert!(t.settle(&tp(0), g0, 0));
        let mut commits = t.take_commits();
        commits.sort();
        assert_eq!(commits, vec![(tp(0), 1)]);
        assert!(t.settle(&tp(1), g1, 0));
        assert_eq!(t.take_commits(), vec![(tp(1), 2)]);
    }

    #[test]
    fn commits_are_offered_once_and_again_after_a_failure() {
        let mut t = OffsetTracker::default();
        let g = t.delivered(&tp(0), 0);
        t.settle(&tp(0), g, 0);
        assert_eq!(t.take_commits(), vec![(tp(0), 1)]);
        assert!(t.take_commits().is_empty(), "nothing moved since");
        t.commit_failed(&tp(0), 1);
        assert_eq!(t.take_commits(), vec![(tp(0), 1)]);
    }

    #[test]
    fn settling_twice_or_unknown_offsets_changes_nothing() {
        let mut t = OffsetTracker::default();
        let g = t.delivered(&tp(0), 5);
        t.delivered(&tp(0), 6);
        assert!(!t.settle(&tp(0), g, 6));
        assert!(!t.settle(&tp(0), g, 6), "a second settle of 6 is a no-op");
        assert!(!t.settle(&tp(0), g, 99), "never delivered");
        assert!(!t.settle(&tp(9), g, 5), "unknown partition");
        assert_eq!(t.watermark(&tp(0)), None);
        assert!(t.settle(&tp(0), g, 5));
        assert_eq!(t.watermark(&tp(0)), Some(7));
        // Redelivered below the watermark (e.g. a refetch): not tracked again.
        t.delivered(&tp(0), 6);
        assert_eq!(t.unsettled(), 0);
    }

    #[test]
    fn messages_read_before_the_assign_callback_stay_current() {
        let mut t = OffsetTracker::default();
        // librdkafka fetched offset 0 before our assign callback recorded the partition.
        let early = t.delivered(&tp(0), 0);
        let assigned = t.assign(tp(0));
        assert_eq!(
            assigned, early,
            "the assign callback kept the early generation"
        );
        assert!(
            t.is_current(&tp(0), early),
            "the early delivery is not orphaned"
        );
        t.delivered(&tp(0), 1);
        assert!(t.settle(&tp(0), early, 0));
        assert!(t.settle(&tp(0), assigned, 1));
        assert_eq!(t.watermark(&tp(0)), Some(2));
    }

    #[test]
    fn a_revoked_generation_cannot_move_the_next_one() {
        let mut t = OffsetTracker::default();
        let old = t.assign(tp(0));
        t.delivered(&tp(0), 0);
        t.delivered(&tp(0), 1);
        assert!(t.settle(&tp(0), old, 0));
        // Revoked with 1 unsettled: only the settled prefix is committed.
        assert_eq!(t.revoke(&tp(0)), Some(1));
        assert!(!t.is_current(&tp(0), old));
        // Reassigned; the new owner starts again at the committed offset 1.
        let new = t.assign(tp(0));
        assert_ne!(old, new);
        t.delivered(&tp(0), 1);
        t.delivered(&tp(0), 2);
        assert!(!t.settle(&tp(0), old, 1), "a stale settle is ignored");
        assert_eq!(t.watermark(&tp(0)), None);
        assert!(t.settle(&tp(0), new, 1));
        assert_eq!(t.watermark(&tp(0)), Some(2));
        assert!(t.is_current(&tp(0), new));
    }

    #[test]
    fn revoke_after_a_commit_returns_nothing_new() {
        let mut t = OffsetTracker::default();
        let g = t.delivered(&tp(0), 0);
        t.settle(&tp(0), g, 0);
        assert_eq!(t.take_commits(), vec![(tp(0), 1)]);
        assert_eq!(t.revoke(&tp(0)), None);
        assert_eq!(t.revoke(&tp(0)), None, "already gone");
    }
}
