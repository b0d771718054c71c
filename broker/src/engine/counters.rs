//! The engine's counters, one named field each (not keyed by strings), reported in `status`
//! under the same names (PROTOCOL.md section 5 lists them) and in `/metrics` as
//! `mpreg_<name>_total` with their documentation as help text (docs/OPERATIONS.md).

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Monotonic counters; a field is only ever incremented.
        #[derive(Debug, Default, Clone, PartialEq, Eq)]
        pub struct Counters {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl Counters {
            /// Every counter with its name, in declaration order.
            pub fn entries(&self) -> impl Iterator<Item = (&'static str, u64)> {
                [$((stringify!($name), self.$name)),*].into_iter()
            }

            /// Every counter with its name and its documentation (the help text of the
            /// `/metrics` exposition), in declaration order.
            pub fn described(&self) -> impl Iterator<Item = (&'static str, &'static str, u64)> {
                [$((stringify!($name), concat!($($doc),*), self.$name)),*].into_iter()
            }
        }
    };
}

counters! {
    /// `plan` requests read.
    plans_received,
    /// Plans answered with a result.
    plans_completed,
    /// Plans that ended with an error after they started.
    plans_failed,
    /// Plans sent again under their id and answered without running again.
    plans_resumed,
    /// Plans refused by validation.
    plans_rejected,
    /// Plans refused by the per-client or broker quota.
    plans_refused_quota,
    /// Plans refused because of the bytes held for plans in flight.
    plans_refused_bytes,
    /// Plans ended by their client's `cancel`.
    plans_cancelled,
    /// Plans cancelled because their client stopped sending heartbeats.
    plans_cancelled_client_gone,
    /// Plans failed with `no_route`.
    plans_no_route,
    /// Plans failed with `plan_timeout`.
    plans_timed_out,
    /// Steps whose function failed.
    steps_failed,
    /// Steps that ran past their own timeout.
    steps_timed_out,
    /// Tasks sent to workers.
    tasks_dispatched,
    /// Tasks re-dispatched after their worker (or peer) was lost.
    tasks_retried,
    /// Steps forwarded to a peer broker.
    tasks_forwarded,
    /// Steps run here for a peer broker.
    forwards_served,
    /// Publishes a peer with interest could not be sent (its link was down or full).
    publishes_not_forwarded,
    /// Publishes sent to a peer whose subscribers want them (one per peer and message).
    publishes_forwarded,
    /// Publishes received from peers for this broker's subscribers.
    forwarded_publishes_received,
    /// `subscribe` requests with `cluster_ack` answered after the acknowledgement timeout,
    /// without every reachable peer's acknowledgement.
    cluster_acks_incomplete,
    /// Bytes (message bodies) published on the gossip socket, counted once per message.
    gossip_bytes_sent,
    /// Bytes (message bodies) received from the peers' gossip sockets.
    gossip_bytes_received,
    /// Bytes (message bodies) sent on the peers' control links (probes, introductions,
    /// catalogue snapshots, acknowledgements).
    peer_control_bytes_sent,
    /// Steps whose resolved arguments exceeded the limits.
    tasks_too_large,
    /// Registrations accepted.
    workers_registered,
    /// Workers dropped for silence or a full or closed connection.
    workers_expired,
    /// Workers dropped because their key was removed.
    workers_revoked,
    /// Registrations refused as invalid.
    registrations_refused,
    /// Clients that stopped sending heartbeats.
    clients_expired,
    /// Messages answered with a 1xx error.
    malformed_messages,
    /// Requests refused by the access rules.
    requests_denied,
    /// Cache invalidations applied (from clients and from peers).
    cache_invalidations,
    /// Cluster tier: lookups sent to a key's owner.
    cache_remote_lookups,
    /// Cluster tier: lookups the owner answered with the result.
    cache_remote_hits,
    /// Cluster tier: lookups the owner answered without it.
    cache_remote_misses,
    /// Cluster tier: lookups the owner did not answer in time.
    cache_remote_timeouts,
    /// Cluster tier: results handed to their key's owner.
    cache_remote_puts,
    /// Cluster tier: lookups of other members this broker answered with a result.
    cache_remote_served,
    /// Replies replaced by `message_too_large`.
    replies_too_large,
    /// Replies dropped because the client's queue was full.
    client_replies_dropped_hwm,
    /// Replies whose client connection was gone.
    client_replies_undeliverable,
}
