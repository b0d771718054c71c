//! The brokers a client may talk to, in order: the ones the application gave, then the ones
//! learned from the cluster; which one is in use, which one to try next and how long to give
//! it. Pure: no sockets, no clock.
//!
//! The rule (issue 11, client failover): one connection at a time. When it is lost, or a
//! broker being tried does not come up in time, the client moves to the next broker of the
//! list, wrapping around. In the first round after a connection was up, a broker that refuses
//! at once (nothing listens, the handshake fails) is skipped at once; once every broker was
//! tried, each attempt waits longer (doubling, at most [`MAX_PATIENCE`]) and libzmq's own
//! reconnection runs meanwhile, so a client whose brokers are all down never spins.

use std::time::Duration;

use crate::error::Error;

/// Most endpoints the application may give.
pub const MAX_GIVEN_BROKERS: usize = 64;
/// Most endpoints learned from the cluster kept in the list (beyond the given ones).
pub const MAX_LEARNED_BROKERS: usize = 32;
/// Longest an attempt to reach one broker waits before the next one is tried, once every
/// broker of the list failed in a row.
pub const MAX_PATIENCE: Duration = Duration::from_secs(5);

/// One attempt to reach a broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// The broker to try.
    pub endpoint: String,
    /// How long it may take to complete the handshake before the next one is tried.
    pub patience: Duration,
}

/// The ordered brokers of one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BrokerList {
    /// The given endpoints first, then the learned ones.
    endpoints: Vec<String>,
    /// How many of `endpoints` the application gave.
    given: usize,
    /// The one in use (or being tried).
    current: usize,
    /// Attempts that failed in a row since a connection was last up.
    failures: u32,
}

impl BrokerList {
    /// The list from what the application gave: endpoints, each possibly a comma-separated
    /// list itself (`"tcp://a:7400,tcp://b:7400"`), spaces around commas ignored, repeats
    /// dropped.
    ///
    /// # Errors
    /// [`Error::Invalid`]: no endpoint, more than [`MAX_GIVEN_BROKERS`], or one that is not a
    /// valid endpoint.
    pub(crate) fn parse<I, S>(given: I) -> Result<BrokerList, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut endpoints: Vec<String> = Vec::new();
        for item in given {
            for endpoint in item.as_ref().split(',').map(str::trim) {
                if endpoint.is_empty() {
                    continue;
                }
                mpreg_transport::endpoint::validate(endpoint)
                    .map_err(|e| Error::Invalid(format!("broker endpoint: {e}")))?;
                if !endpoints.iter().any(|e| e == endpoint) {
                    endpoints.push(endpoint.to_string());
                }
            }
        }
        if endpoints.is_empty() {
            return Err(Error::Invalid("no broker endpoint given".to_string()));
        }
        if endpoints.len() > MAX_GIVEN_BROKERS {
            return Err(Error::Invalid(format!(
                "{} broker endpoints given, at most {MAX_GIVEN_BROKERS} are allowed",
                endpoints.len()
            )));
        }
        let given = endpoints.len();
        Ok(BrokerList {
            endpoints,
            given,
            current: 0,
            failures: 0,
        })
    }

    /// The broker in use (or being tried).
    pub(crate) fn current(&self) -> &str {
        &self.endpoints[self.current]
    }

    /// Every broker, in order.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// True when there is another broker to move to.
    pub(crate) fn can_move(&self) -> bool {
        self.endpoints.len() > 1
    }

    /// True while every broker has not yet been tried since the last connection was up: a
    /// broker that refuses at once is then skipped at once.
    pub(crate) fn first_round(&self) -> bool {
        (self.failures as usize) < self.endpoints.len()
    }

    /// The connection to the current broker came up.
    pub(crate) fn up(&mut self) {
        self.failures = 0;
    }

    /// How long the first attempt (at the first broker) may take.
    pub(crate) fn first_attempt(&self, silence: Duration) -> Attempt {
        Attempt {
            endpoint: self.current().to_string(),
            patience: silence,
        }
    }

    /// The current broker failed (lost, refused, or not up in time): the next one to try.
    pub(crate) fn advance(&mut self, silence: Duration) -> Attempt {
        self.failures = self.failures.saturating_add(1);
        self.current = (self.current + 1) % self.endpoints.len();
        let rounds = (self.failures as usize - 1) / self.endpoints.len();
        let patience = silence
            .saturating_mul(1 << rounds.min(16))
            .min(MAX_PATIENCE.max(silence));
        Attempt {
            endpoint: self.current().to_string(),
            patience,
        }
    }

    /// What the current broker says the other live brokers of its cluster are: they replace
    /// the endpoints learned before (the given ones always stay first, in their order; the
    /// current one stays). Returns true when the list changed.
    pub(crate) fn learn(&mut self, alive: impl IntoIterator<Item = String>) -> bool {
        let current = self.current().to_string();
        let mut endpoints: Vec<String> = self.endpoints[..self.given].to_vec();
        for endpoint in alive {
            if endpoints.len() >= self.given + MAX_LEARNED_BROKERS {
                break;
            }
            if mpreg_transport::endpoint::validate(&endpoint).is_ok()
                && !endpoints.contains(&endpoint)
            {
                endpoints.push(endpoint);
            }
        }
        if !endpoints.contains(&current) {
            endpoints.push(current.clone());
        }
        if endpoints == self.endpoints {
            return false;
        }
        self.current = endpoints
            .iter()
            .position(|e| *e == current)
            .unwrap_or_default();
        self.endpoints = endpoints;
        true
    }
}

/// The endpoint a client should use to reach a cluster member, from the client and peer
/// endpoints it advertises: a member bound to every interface (`tcp://0.0.0.0:7400`) is
/// reached at the host of its peer endpoint, which its peers reach it at; `None` when that
/// is unknown too, or the endpoint is not one.
pub(crate) fn member_client_endpoint(client: &str, peer: &str) -> Option<String> {
    let host_port = |endpoint: &str| -> Option<(String, String)> {
        let (host, port) = endpoint.strip_prefix("tcp://")?.rsplit_once(':')?;
        Some((host.to_string(), port.to_string()))
    };
    let wildcard = |host: &str| matches!(host, "0.0.0.0" | "*" | "[::]" | "::");
    let endpoint = match host_port(client) {
        Some((host, port)) if wildcard(&host) => {
            let (peer_host, _) = host_port(peer).filter(|(h, _)| !wildcard(h))?;
            format!("tcp://{peer_host}:{port}")
        }
        _ => client.to_string(),
    };
    mpreg_transport::endpoint::validate(&endpoint)
        .is_ok()
        .then_some(endpoint)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn list(spec: &str) -> BrokerList {
        BrokerList::parse([spec]).unwrap()
    }

    #[test]
    fn a_comma_separated_string_is_a_list() {
        let l = BrokerList::parse([" tcp://a:1 ,tcp://b:2,,tcp://a:1", "tcp://c:3"]).unwrap();
        assert_eq!(l.endpoints(), ["tcp://a:1", "tcp://b:2", "tcp://c:3"]);
        assert_eq!(l.current(), "tcp://a:1");
        assert!(l.can_move());
        assert!(!list("tcp://a:1").can_move());
    }

    #[test]
    fn bad_lists_are_invalid_input() {
        for bad in ["", " , ", "tcp://a:1,nonsense", "tcp://a"] {
            let err = BrokerList::parse([bad]).unwrap_err();
            assert_eq!(err.code(), 902, "{bad:?}: {err}");
        }
        let many: Vec<String> = (0..=MAX_GIVEN_BROKERS)
            .map(|i| format!("tcp://h:{}", 1000 + i))
            .collect();
        let err = BrokerList::parse(&many).unwrap_err();
        assert!(err.message().contains("at most"), "{err}");
        assert!(BrokerList::parse(&many[..MAX_GIVEN_BROKERS]).is_ok());
    }

    #[test]
    fn moves_wrap_around_and_wait_longer_after_each_full_round() {
        let mut l = list("tcp://a:1,tcp://b:2,tcp://c:3");
        assert_eq!(l.first_attempt(S).patience, S);
        let mut seen = Vec::new();
        for _ in 0..9 {
            let first_round = l.first_round();
            let attempt = l.advance(S);
            seen.push((attempt.endpoint, attempt.patience.as_secs(), first_round));
        }
        let want = [
            ("tcp://b:2", 1, true),
            ("tcp://c:3", 1, true),
            ("tcp://a:1", 1, true),
            ("tcp://b:2", 2, false),
            ("tcp://c:3", 2, false),
            ("tcp://a:1", 2, false),
            ("tcp://b:2", 4, false),
            ("tcp://c:3", 4, false),
            ("tcp://a:1", 4, false),
        ];
        let want: Vec<(String, u64, bool)> = want
            .iter()
            .map(|(e, p, f)| (e.to_string(), *p, *f))
            .collect();
        assert_eq!(seen, want);
        // Bounded however long it goes on.
        for _ in 0..100 {
            assert!(l.advance(S).patience <= MAX_PATIENCE);
        }
        // A connection that comes up starts the next trouble from the first round again.
        l.up();
        assert!(l.first_round());
        assert_eq!(l.advance(S).patience, S);
        // A silence window longer than the cap is never shortened.
        let mut slow = list("tcp://a:1,tcp://b:2");
        assert_eq!(slow.advance(S * 10).patience, S * 10);
    }

    #[test]
    fn learned_brokers_follow_the_given_ones_bounded_and_replaced_on_refresh() {
        let mut l = list("tcp://a:1");
        assert!(l.learn(["tcp://a:1".to_string(), "tcp://b:2".to_string()]));
        assert_eq!(l.endpoints(), ["tcp://a:1", "tcp://b:2"]);
        assert!(!l.learn(["tcp://b:2".to_string()]), "nothing new");
        // Moved to b, which then reports c instead of itself: b stays (in use), c is added.
        l.advance(S);
        assert_eq!(l.current(), "tcp://b:2");
        assert!(l.learn(["tcp://c:3".to_string(), "junk".to_string()]));
        assert_eq!(l.endpoints(), ["tcp://a:1", "tcp://c:3", "tcp://b:2"]);
        assert_eq!(l.current(), "tcp://b:2");
        // A refresh without b once the client moved back to a drops b.
        l.advance(S);
        assert_eq!(l.current(), "tcp://a:1");
        assert!(l.learn(["tcp://c:3".to_string()]));
        assert_eq!(l.endpoints(), ["tcp://a:1", "tcp://c:3"]);
        // Bounded.
        let many = (0..100).map(|i| format!("tcp://h:{}", 2000 + i));
        l.learn(many);
        assert_eq!(l.endpoints().len(), 1 + MAX_LEARNED_BROKERS);
        assert_eq!(l.endpoints()[0], "tcp://a:1");
    }

    #[test]
    fn members_bound_to_every_interface_are_reached_at_their_peer_host() {
        let cases = [
            (
                "tcp://10.0.0.5:7400",
                "tcp://10.0.0.5:7403",
                Some("tcp://10.0.0.5:7400"),
            ),
            (
                "tcp://0.0.0.0:7400",
                "tcp://10.0.0.6:7403",
                Some("tcp://10.0.0.6:7400"),
            ),
            ("tcp://*:7400", "tcp://h7:7403", Some("tcp://h7:7400")),
            ("tcp://0.0.0.0:7400", "tcp://0.0.0.0:7403", None),
            ("tcp://0.0.0.0:7400", "", None),
            ("ipc:///tmp/b", "", Some("ipc:///tmp/b")),
            ("", "tcp://h:1", None),
        ];
        for (client, peer, want) in cases {
            assert_eq!(
                member_client_endpoint(client, peer).as_deref(),
                want,
                "{client} {peer}"
            );
        }
    }
}
