//! Final replies kept for plans whose client chose the plan id, so that a client that lost
//! its connection (to this broker, which then sent the reply into the void) can send the plan
//! again and get the reply instead of running it twice. Bounded in count, bytes and age;
//! plans without a client-chosen id cost nothing here.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use mpreg_protocol::{BrokerToClient, PlanId};

use crate::fast_hash::FastMap;

/// Final replies kept, at most.
pub const MAX_REPLAYS: usize = 4096;
/// Bytes of final replies kept, at most (encoded size).
pub const MAX_REPLAY_BYTES: usize = 64 << 20;
/// How long a final reply is kept.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(60);

/// Recent final replies by plan id.
#[derive(Default)]
pub struct Replays {
    order: VecDeque<(Instant, PlanId, usize)>,
    /// The reply, and the quota key of the plan's client (its CURVE key under CURVE).
    replies: FastMap<PlanId, (BrokerToClient, Vec<u8>)>,
    bytes: usize,
}

impl Replays {
    /// Keeps the final reply of a plan whose id the client chose. `bytes` bounds the reply's
    /// size from above (the bytes held for the plan: its body and results), so the reply is
    /// not encoded again just to be measured.
    pub fn keep(
        &mut self,
        plan: PlanId,
        owner: Vec<u8>,
        reply: BrokerToClient,
        bytes: usize,
        now: Instant,
    ) {
        if bytes > MAX_REPLAY_BYTES / 4 {
            return;
        }
        self.expire(now);
        while self.order.len() >= MAX_REPLAYS || self.bytes + bytes > MAX_REPLAY_BYTES {
            self.pop_oldest();
        }
        if self.replies.insert(plan, (reply, owner)).is_some() {
            // The same id finished twice (resent after a failover and run again): keep one.
            self.order.retain(|(_, p, _)| *p != plan);
        }
        self.order.push_back((now, plan, bytes));
        self.bytes = self.order.iter().map(|(_, _, b)| b).sum();
    }

    /// The kept final reply of `plan`, if any, for a client with CURVE key `key` (only the
    /// plan's own key may have it; without CURVE there are no keys to compare).
    pub fn get(
        &mut self,
        plan: PlanId,
        key: Option<&str>,
        now: Instant,
    ) -> Option<&BrokerToClient> {
        self.expire(now);
        self.replies
            .get(&plan)
            .filter(|(_, owner)| key.is_none_or(|k| k.as_bytes() == owner.as_slice()))
            .map(|(reply, _)| reply)
    }

    /// Replies kept now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    fn expire(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > REPLAY_WINDOW)
        {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((_, plan, bytes)) = self.order.pop_front() {
            self.replies.remove(&plan);
            self.bytes -= bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpreg_protocol::Pong;

    fn reply(n: u64) -> BrokerToClient {
        BrokerToClient::Pong(Pong {
            id: n,
            broker: "b".into(),
            max_message_bytes: None,
        })
    }

    #[test]
    fn bounded_by_count_and_age() {
        let t0 = Instant::now();
        let mut r = Replays::default();
        for n in 0..(MAX_REPLAYS as u128 + 10) {
            r.keep(
                PlanId(ulid::Ulid(n)),
                b"k".to_vec(),
                reply(n as u64),
                32,
                t0,
            );
        }
        assert_eq!(r.len(), MAX_REPLAYS);
        assert!(
            r.get(PlanId(ulid::Ulid(0)), None, t0).is_none(),
            "the oldest went first"
        );
        assert!(r.get(PlanId(ulid::Ulid(100)), None, t0).is_some());
        assert!(r.get(PlanId(ulid::Ulid(100)), Some("k"), t0).is_some());
        assert!(r.get(PlanId(ulid::Ulid(100)), Some("other"), t0).is_none());
        assert!(r
            .get(PlanId(ulid::Ulid(100)), None, t0 + REPLAY_WINDOW * 2)
            .is_none());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn bounded_by_bytes() {
        let t0 = Instant::now();
        let mut r = Replays::default();
        let big = MAX_REPLAY_BYTES / 8;
        for n in 0..20u128 {
            r.keep(
                PlanId(ulid::Ulid(n)),
                b"k".to_vec(),
                reply(n as u64),
                big,
                t0,
            );
        }
        assert_eq!(r.len(), 8, "64 MiB hold eight replies of 8 MiB");
        assert!(r.get(PlanId(ulid::Ulid(19)), None, t0).is_some());
        assert!(r.get(PlanId(ulid::Ulid(11)), None, t0).is_none());
        // Larger than a quarter of the budget: not kept at all.
        r.keep(
            PlanId(ulid::Ulid(99)),
            b"k".to_vec(),
            reply(99),
            MAX_REPLAY_BYTES / 2,
            t0,
        );
        assert!(r.get(PlanId(ulid::Ulid(99)), None, t0).is_none());
    }
}
