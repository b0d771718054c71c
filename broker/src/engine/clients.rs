//! Client liveness: connections that send `heartbeat` are tracked, and one that falls silent
//! for its window (its interval times `client_liveness`) is gone. Connections that never send
//! a heartbeat are never tracked (PROTOCOL.md section 5).

use std::time::{Duration, Instant};

use crate::fast_hash::FastMap;
use crate::outbox::RoutingId;

/// Shortest client heartbeat interval honoured (a client asking for less is given this).
pub const CLIENT_HEARTBEAT_MIN: Duration = Duration::from_millis(100);
/// Longest client heartbeat interval honoured.
pub const CLIENT_HEARTBEAT_MAX: Duration = Duration::from_secs(60);

struct Tracked {
    last_seen: Instant,
    window: Duration,
}

/// The tracked client connections.
#[derive(Default)]
pub struct ClientLiveness {
    tracked: FastMap<RoutingId, Tracked>,
}

impl ClientLiveness {
    /// Something arrived from `routing`.
    pub fn heard(&mut self, routing: &[u8], now: Instant) {
        if let Some(t) = self.tracked.get_mut(routing) {
            t.last_seen = now;
        }
    }

    /// A heartbeat announcing `interval`: track the connection from now on.
    pub fn heartbeat(&mut self, routing: &[u8], interval: Duration, liveness: u32, now: Instant) {
        let interval = interval.clamp(CLIENT_HEARTBEAT_MIN, CLIENT_HEARTBEAT_MAX);
        let window = interval * liveness.max(1);
        match self.tracked.get_mut(routing) {
            Some(t) => {
                t.last_seen = now;
                t.window = window;
            }
            None => {
                self.tracked.insert(
                    routing.to_vec(),
                    Tracked {
                        last_seen: now,
                        window,
                    },
                );
            }
        }
    }

    /// Removes and returns the connections silent past their window, in routing id order.
    pub fn expire(&mut self, now: Instant) -> Vec<RoutingId> {
        let mut gone: Vec<RoutingId> = self
            .tracked
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(t.last_seen) > t.window)
            .map(|(routing, _)| routing.clone())
            .collect();
        gone.sort_unstable();
        for routing in &gone {
            self.tracked.remove(routing);
        }
        gone
    }

    /// Connections tracked now.
    pub fn len(&self) -> usize {
        self.tracked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silent_past_the_window_only_once_tracked() {
        let t0 = Instant::now();
        let mut clients = ClientLiveness::default();
        clients.heard(b"never", t0);
        clients.heartbeat(b"a", Duration::from_millis(10), 3, t0);
        assert!(clients.expire(t0 + Duration::from_millis(250)).is_empty());
        clients.heard(b"a", t0 + Duration::from_millis(250));
        assert!(clients.expire(t0 + Duration::from_millis(500)).is_empty());
        // 100 ms (the minimum interval) x 3 after the last sign of life.
        assert_eq!(
            clients.expire(t0 + Duration::from_millis(551)),
            vec![b"a".to_vec()]
        );
        assert_eq!(clients.len(), 0);
    }
}
