//! The run queue rr, rt (its slack FIFO) and table share: a FIFO of
//! vcoprocs that a vcoproc can also join at the head (to resume a slice
//! cut short) and leave from the middle (when it blocks), all in O(log n).
//!
//! Each vcoproc in the queue has a [`Place`]: a sequence number, increasing
//! at the tail and decreasing at the head. The policy keeps the place with
//! its own record of the vcoproc, to take it out again.

use crate::ids::VcoprocId;
use std::collections::BTreeSet;

/// Where a vcoproc stands in a [`RunQueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place(i64);

/// A FIFO of vcoprocs with head insertion and removal from the middle.
#[derive(Debug)]
pub(crate) struct RunQueue {
    queue: BTreeSet<(i64, VcoprocId)>,
    /// Next sequence numbers at the head (decreasing) and tail (increasing).
    head: i64,
    tail: i64,
}

impl Default for RunQueue {
    fn default() -> Self {
        RunQueue {
            queue: BTreeSet::new(),
            head: 0,
            tail: 1,
        }
    }
}

impl RunQueue {
    /// Queue `v` at the tail, or at the head when `at_head`.
    pub(crate) fn push(&mut self, v: VcoprocId, at_head: bool) -> Place {
        let seq = if at_head {
            self.head = self.head.saturating_sub(1);
            self.head
        } else {
            self.tail = self.tail.saturating_add(1);
            self.tail
        };
        self.queue.insert((seq, v));
        Place(seq)
    }

    /// Take `v`, queued at `at`, out of the queue.
    pub(crate) fn remove(&mut self, v: VcoprocId, at: Place) {
        self.queue.remove(&(at.0, v));
    }

    /// Take the head out of the queue.
    pub(crate) fn pop(&mut self) -> Option<VcoprocId> {
        self.queue.pop_first().map(|(_, v)| v)
    }

    /// The queued vcoprocs, head first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = VcoprocId> + '_ {
        self.queue.iter().map(|&(_, v)| v)
    }

    /// Whether nobody is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_with_head_insertion_and_removal_from_the_middle() {
        let mut q = RunQueue::default();
        let v = VcoprocId;
        assert!(q.is_empty());
        q.push(v(1), false);
        let p2 = q.push(v(2), false);
        q.push(v(3), false);
        q.push(v(4), true);
        q.remove(v(2), p2);
        // Removing with a stale place changes nothing.
        q.remove(v(3), p2);
        assert_eq!(q.pop(), Some(v(4)));
        q.push(v(5), true);
        assert_eq!(q.iter().collect::<Vec<_>>(), [v(5), v(1), v(3)]);
        let order: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(order, [v(5), v(1), v(3)]);
        assert!(q.is_empty());
        assert_eq!(q.pop(), None);
    }
}
