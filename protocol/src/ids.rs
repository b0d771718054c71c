//! Identifiers, each its own type so that one can never be passed for another.
//!
//! - [`PlanId`]: a ULID given by the broker to every plan it reads; it is also the plan's trace
//!   id (in its replies and in the broker's log lines about it). Serialized as the 26-character
//!   ULID text.
//! - [`TaskId`]: one dispatch of one step to a worker; unique per broker incarnation, never
//!   reused (a late answer to an old task can never hit a new one). A msgpack uint.
//! - [`WorkerId`]: one registration of a worker connection at a broker; never reused.
//! - [`BrokerId`]: one broker incarnation (a ULID minted at each start), so a restarted broker
//!   never inherits anything of its former self.
//! - [`NodeId`]: one worker process incarnation (a ULID minted at each start).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use ulid::Ulid;

macro_rules! ulid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(pub Ulid);

        impl $name {
            /// The raw 128 bits.
            pub fn to_u128(self) -> u128 {
                self.0 .0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; ulid::ULID_LEN];
                f.write_str(self.0.array_to_str(&mut buf))
            }
        }

        impl FromStr for $name {
            type Err = ulid::DecodeError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Ulid::from_string(s).map($name)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut buf = [0u8; ulid::ULID_LEN];
                serializer.serialize_str(self.0.array_to_str(&mut buf))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(UlidText).map($name)
            }
        }
    };
}

/// Reads a ULID from its text in place: serde's `Cow<str>` always copies into a `String`,
/// one allocation per id on every reply a client decodes.
struct UlidText;

impl serde::de::Visitor<'_> for UlidText {
    type Value = Ulid;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Ulid, E> {
        Ulid::from_string(text).map_err(E::custom)
    }

    // UTF-8 text sent as msgpack `bin`, as `String` (the former decoding) accepted it.
    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<Ulid, E> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.visit_str(text),
            Err(_) => Err(E::invalid_value(serde::de::Unexpected::Bytes(bytes), &self)),
        }
    }
}

macro_rules! counter_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

ulid_id! {
    /// A plan, as the broker that owns it knows it (and its trace id).
    PlanId
}

ulid_id! {
    /// One incarnation of a broker.
    BrokerId
}

ulid_id! {
    /// One incarnation of a worker process.
    NodeId
}

counter_id! {
    /// One dispatch of one step (a retried step gets a new one).
    TaskId
}

counter_id! {
    /// One registration of a worker connection at a broker.
    WorkerId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulid_ids_travel_as_their_text() {
        let id = PlanId(Ulid(0x0191_2345_6789_abcd_ef01_2345_6789_abcd));
        let bytes = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(bytes[0], 0xa0 | 26, "a fixstr of 26 characters");
        assert_eq!(&bytes[1..], id.to_string().as_bytes());
        let back: PlanId = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(back, id);
        assert!(rmp_serde::from_slice::<PlanId>(&rmp_serde::to_vec("nope").unwrap()).is_err());
        assert!(rmp_serde::from_slice::<PlanId>(&rmp_serde::to_vec(&7u64).unwrap()).is_err());
        let as_bin =
            rmp_serde::to_vec(&serde_bytes::Bytes::new(id.to_string().as_bytes())).unwrap();
        assert_eq!(as_bin[0], 0xc4, "bin 8");
        assert_eq!(rmp_serde::from_slice::<PlanId>(&as_bin).unwrap(), id);
        // Inside a message, where the text is borrowed from the body.
        let body = rmp_serde::to_vec_named(&(id, id.to_string())).unwrap();
        let (a, b): (PlanId, String) = rmp_serde::from_slice(&body).unwrap();
        assert_eq!((a, b), (id, id.to_string()));
    }

    #[test]
    fn counter_ids_travel_as_integers() {
        assert_eq!(rmp_serde::to_vec(&TaskId(7)).unwrap(), [7]);
        assert_eq!(
            rmp_serde::from_slice::<WorkerId>(&[0xcc, 200]).unwrap(),
            WorkerId(200)
        );
    }
}
