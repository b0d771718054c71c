//! Unconfirmed publishes that may still be answered with an error. Pure.
//!
//! The broker handles one connection's requests in order and answers on a FIFO pipe, so once a
//! request is answered, every error about a publish sent before it has arrived: a publish is
//! remembered only until then, by its position among everything the connection sent.

use std::collections::VecDeque;

/// Unconfirmed publishes remembered for a possible error: enough for a burst between two
/// answered requests (16 bytes each). An error about an older one counts as an unmatched
/// reply.
pub(crate) const MAX_UNCONFIRMED: usize = 65_536;

/// The unconfirmed publishes an error may still come for: `(sent, id)`, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Unconfirmed {
    entries: VecDeque<(u64, u64)>,
    /// The latest publish already reported in doubt (by its `sent` number).
    reported: u64,
}

impl Unconfirmed {
    /// A publish with request id `id` left as message number `sent`. Beyond
    /// [`MAX_UNCONFIRMED`], the oldest is forgotten.
    pub(crate) fn push(&mut self, sent: u64, id: u64) {
        if self.entries.len() == MAX_UNCONFIRMED {
            self.entries.pop_front();
        }
        self.entries.push_back((sent, id));
    }

    /// The request sent as message number `sent` was answered: the broker has handled
    /// everything sent before it, so no error can follow for those publishes.
    pub(crate) fn answered(&mut self, sent: u64) {
        while self.entries.front().is_some_and(|&(s, _)| s < sent) {
            self.entries.pop_front();
        }
    }

    /// An error arrived for request `id`: true (and forgotten) if it is about a publish.
    pub(crate) fn take(&mut self, id: u64) -> bool {
        match self.entries.iter().position(|&(_, i)| i == id) {
            Some(at) => {
                self.entries.remove(at);
                true
            }
            None => false,
        }
    }

    /// Publishes whose fate is not known yet.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The connection was lost: how many publishes, not reported before, may never have
    /// reached the broker. They stay remembered (one still queued here reaches the next broker,
    /// which may answer it with an error).
    pub(crate) fn report_in_doubt(&mut self) -> usize {
        let fresh = self
            .entries
            .iter()
            .filter(|&&(sent, _)| sent > self.reported)
            .count();
        if let Some(&(sent, _)) = self.entries.back() {
            self.reported = self.reported.max(sent);
        }
        fresh
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_forgets_every_publish_sent_before_its_request() {
        let mut u = Unconfirmed::default();
        u.push(1, 10);
        u.push(2, 11);
        u.push(4, 13);
        // Request sent as message 3 answered: publishes 1 and 2 are settled, 4 is not.
        u.answered(3);
        assert_eq!(u.len(), 1);
        assert!(!u.take(10));
        assert!(u.take(13));
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn an_error_matches_its_publish_once() {
        let mut u = Unconfirmed::default();
        u.push(1, 10);
        u.push(2, 11);
        assert!(u.take(11));
        assert!(!u.take(11));
        assert_eq!(u.len(), 1);
        u.clear();
        assert!(!u.take(10));
    }

    #[test]
    fn publishes_in_doubt_are_reported_once() {
        let mut u = Unconfirmed::default();
        u.push(1, 10);
        u.push(2, 11);
        assert_eq!(u.report_in_doubt(), 2);
        // Lost again before anything was answered: only the new one is news.
        u.push(5, 12);
        assert_eq!(u.report_in_doubt(), 1);
        assert_eq!(u.report_in_doubt(), 0);
        // Still remembered: an error for one of them is a publish error.
        assert!(u.take(11));
    }

    #[test]
    fn the_oldest_is_forgotten_beyond_the_bound() {
        let mut u = Unconfirmed::default();
        for n in 0..=MAX_UNCONFIRMED as u64 {
            u.push(n, n);
        }
        assert_eq!(u.len(), MAX_UNCONFIRMED);
        assert!(!u.take(0));
        assert!(u.take(1));
    }
}
