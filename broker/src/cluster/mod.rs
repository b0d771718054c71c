//! The cluster's pure cores: who is a member ([`membership`], SWIM-style failure detection),
//! and what each member can run and wants to receive ([`catalogue`]). The engine drives them
//! with time and peer messages; the shell carries their messages on the peer links and the
//! gossip socket. docs/CLUSTER.md explains the design and its guarantees.

pub mod catalogue;
pub mod membership;
