//! The cache key of a step (design section 4.2): function, function version, the sorted set of
//! requested resources, and the canonical bytes of the resolved `args` and `kwargs`
//! ([`canonical`](super::canonical)), with a 64-bit digest of all four.
//!
//! The resources are part of the key because they are the client's contract: any worker
//! holding them gives an equivalent answer, a worker holding others may not. They are a set:
//! order and repetition in `locs` do not matter.
//!
//! The digest only places the key in hash tables and orders it in the indexes. Equality
//! compares every part, the canonical bytes included, so two calls whose digests collide are
//! two keys: a collision can cost a lookup a few more comparisons, never return another call's
//! result, and never merge two calls in flight.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use mpreg_protocol::Value;

use super::canonical::{encode_call, CanonicalError};

/// Identifies one call for the cache. Cheap to clone (one shared allocation).
#[derive(Clone)]
pub struct CacheKey(Arc<KeyParts>);

struct KeyParts {
    digest: u64,
    fun: Box<str>,
    version: Option<Box<str>>,
    locs: Box<[Box<str>]>,
    canonical: Box<[u8]>,
}

impl CacheKey {
    /// The key of a call of `fun` (at `version`, when functions have versions) on a worker
    /// holding `locs`, with arguments already resolved. Fails when the arguments have no
    /// canonical form (too deep or too long): such a call is not cached.
    pub fn new(
        fun: &str,
        version: Option<&str>,
        locs: &[String],
        args: &[Value],
        kwargs: &BTreeMap<String, Value>,
    ) -> Result<CacheKey, CanonicalError> {
        let mut sorted: Vec<&str> = locs.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        let canonical = encode_call(args, kwargs)?;
        Ok(CacheKey::from_parts(fun, version, &sorted, canonical))
    }

    fn from_parts(
        fun: &str,
        version: Option<&str>,
        sorted_locs: &[&str],
        canonical: Vec<u8>,
    ) -> CacheKey {
        // SipHash-1-3 (std's `DefaultHasher`) with its fixed zero key: in std (no new crate),
        // fast on long inputs, well distributed, and the same for every key built by one build
        // of the broker, so orders derived from it are deterministic. Its collision resistance
        // is not needed (equality compares the bytes), nor is a secret key: a client that
        // wants to push others' entries out can simply fill the cache. It is not stable across
        // Rust releases: never persist it or send it to another process (a cluster tier must
        // hash the canonical bytes with an algorithm it names).
        let mut h = DefaultHasher::new();
        let mut field = |bytes: &[u8]| {
            h.write_u64(bytes.len() as u64);
            h.write(bytes);
        };
        field(fun.as_bytes());
        match version {
            None => field(b"\x00"),
            Some(v) => {
                field(b"\x01");
                field(v.as_bytes());
            }
        }
        h.write_u64(sorted_locs.len() as u64);
        for loc in sorted_locs {
            h.write_u64(loc.len() as u64);
            h.write(loc.as_bytes());
        }
        h.write_u64(canonical.len() as u64);
        h.write(&canonical);
        CacheKey(Arc::new(KeyParts {
            digest: h.finish(),
            fun: fun.into(),
            version: version.map(Into::into),
            locs: sorted_locs.iter().map(|&l| l.into()).collect(),
            canonical: canonical.into_boxed_slice(),
        }))
    }

    /// The key as another broker names it (`cache_get`, `cache_put`).
    pub fn to_wire(&self) -> mpreg_protocol::WireKey {
        mpreg_protocol::WireKey {
            fun: self.0.fun.to_string(),
            version: self.0.version.as_ref().map(|v| v.to_string()),
            locs: self.0.locs.iter().map(|l| l.to_string()).collect(),
            canonical: self.0.canonical.to_vec(),
        }
    }

    /// The key another broker named (its resources are sorted and deduplicated again here).
    pub fn from_wire(wire: &mpreg_protocol::WireKey) -> CacheKey {
        let mut sorted: Vec<&str> = wire.locs.iter().map(String::as_str).collect();
        sorted.sort_unstable();
        sorted.dedup();
        CacheKey::from_parts(
            &wire.fun,
            wire.version.as_deref(),
            &sorted,
            wire.canonical.clone(),
        )
    }

    /// A digest of the parts that is the same in every build and process (FNV-1a, 64 bits):
    /// what the cluster tier places keys by.
    pub fn stable_digest(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in (bytes.len() as u64).to_le_bytes().iter().chain(bytes) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        eat(self.0.fun.as_bytes());
        eat(self.0.version.as_deref().unwrap_or("").as_bytes());
        for loc in self.0.locs.iter() {
            eat(loc.as_bytes());
        }
        eat(&self.0.canonical);
        h
    }

    /// The function called.
    pub fn fun(&self) -> &str {
        &self.0.fun
    }

    /// The function's version, when it has one.
    pub fn version(&self) -> Option<&str> {
        self.0.version.as_deref()
    }

    /// The requested resources, sorted and without repetition.
    pub fn locs(&self) -> impl ExactSizeIterator<Item = &str> {
        self.0.locs.iter().map(|l| &**l)
    }

    /// The 64-bit digest of all parts (see the note in `from_parts` on its stability).
    pub fn digest(&self) -> u64 {
        self.0.digest
    }

    /// The canonical msgpack of `[args, kwargs]`.
    pub fn canonical(&self) -> &[u8] {
        &self.0.canonical
    }

    /// Bytes this key holds in memory (counted once per entry, however often it is cloned).
    pub fn footprint(&self) -> usize {
        let p = &self.0;
        // The Arc's two counters come with the parts.
        2 * std::mem::size_of::<usize>()
            + std::mem::size_of::<KeyParts>()
            + p.fun.len()
            + p.version.as_ref().map_or(0, |v| v.len())
            + p.locs
                .iter()
                .map(|l| std::mem::size_of::<Box<str>>() + l.len())
                .sum::<usize>()
            + p.canonical.len()
    }
}

#[cfg(test)]
impl CacheKey {
    /// A key of `fun` with these canonical bytes and a chosen digest: a forged collision.
    pub(crate) fn forged(fun: &str, canonical: Vec<u8>, digest: u64) -> CacheKey {
        let mut key = CacheKey::from_parts(fun, None, &[], canonical);
        if let Some(parts) = Arc::get_mut(&mut key.0) {
            parts.digest = digest;
        }
        key
    }
}

impl PartialEq for CacheKey {
    fn eq(&self, other: &Self) -> bool {
        let (a, b) = (&*self.0, &*other.0);
        Arc::ptr_eq(&self.0, &other.0)
            || (a.digest == b.digest
                && a.fun == b.fun
                && a.version == b.version
                && a.locs == b.locs
                && a.canonical == b.canonical)
    }
}

impl Eq for CacheKey {}

impl Hash for CacheKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Equal keys have equal digests, which is all `Hash` must keep.
        state.write_u64(self.0.digest);
    }
}

impl Ord for CacheKey {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (&*self.0, &*other.0);
        a.digest
            .cmp(&b.digest)
            .then_with(|| a.fun.cmp(&b.fun))
            .then_with(|| a.version.cmp(&b.version))
            .then_with(|| a.locs.cmp(&b.locs))
            .then_with(|| a.canonical.cmp(&b.canonical))
    }
}

impl PartialOrd for CacheKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.fun)?;
        if let Some(v) = &self.0.version {
            write!(f, "@{v}")?;
        }
        write!(
            f,
            "{:?}#{:016x}/{}B",
            self.0.locs,
            self.0.digest,
            self.0.canonical.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::canonical::tests::{shuffle_maps, value};
    use super::*;
    use proptest::prelude::*;

    fn key(fun: &str, locs: &[&str], args: Vec<Value>, kwargs: &[(&str, Value)]) -> CacheKey {
        let locs: Vec<String> = locs.iter().map(|l| l.to_string()).collect();
        let kwargs = kwargs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        CacheKey::new(fun, None, &locs, &args, &kwargs).unwrap()
    }

    #[test]
    fn str_and_bin_are_different_keys() {
        let s = key("f", &[], vec![Value::from("a")], &[]);
        let b = key("f", &[], vec![Value::Binary(b"a".to_vec())], &[]);
        assert_ne!(s, b);
        assert_ne!(s.canonical(), b.canonical());
    }

    #[test]
    fn every_part_counts() {
        let base = key(
            "f",
            &["gpu"],
            vec![Value::from(1)],
            &[("x", Value::from(2))],
        );
        let others = [
            key(
                "g",
                &["gpu"],
                vec![Value::from(1)],
                &[("x", Value::from(2))],
            ),
            key(
                "f",
                &["cpu"],
                vec![Value::from(1)],
                &[("x", Value::from(2))],
            ),
            key("f", &[], vec![Value::from(1)], &[("x", Value::from(2))]),
            key(
                "f",
                &["gpu"],
                vec![Value::from(2)],
                &[("x", Value::from(2))],
            ),
            key(
                "f",
                &["gpu"],
                vec![Value::from(1)],
                &[("y", Value::from(2))],
            ),
            key(
                "f",
                &["gpu"],
                vec![],
                &[("x", Value::from(2)), ("0", Value::from(1))],
            ),
        ];
        for other in &others {
            assert_ne!(&base, other);
        }
        let versioned = |v| {
            CacheKey::new(
                "f",
                v,
                &["gpu".to_string()],
                &[Value::from(1)],
                &BTreeMap::from([("x".to_string(), Value::from(2))]),
            )
            .unwrap()
        };
        assert_eq!(versioned(None), base);
        assert_ne!(versioned(Some("1.0")), base);
        assert_ne!(versioned(Some("1.0")), versioned(Some("1.1")));
        // Function and version are fields apart, not a joined string.
        assert_ne!(
            CacheKey::new("f1", None, &[], &[], &BTreeMap::new()).unwrap(),
            CacheKey::new("f", Some("1"), &[], &[], &BTreeMap::new()).unwrap()
        );
    }

    #[test]
    fn a_digest_collision_is_still_two_keys() {
        let a = CacheKey::from_parts("f", None, &[], vec![0x92, 0x90, 0x80]);
        let parts = CacheKey::forged("f", vec![0x92, 0x91, 0xc0, 0x80], a.digest());
        assert_eq!(a.digest(), parts.digest());
        assert_ne!(a, parts);
        assert_ne!(a.cmp(&parts), Ordering::Equal);
    }

    #[test]
    fn footprint_counts_the_bytes() {
        let small = key("f", &[], vec![], &[]);
        let big = key("f", &["r"], vec![Value::Binary(vec![0; 1000])], &[]);
        assert!(big.footprint() > small.footprint() + 1000);
    }

    fn locs() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-d]{1,2}", 0..5)
    }

    fn kwargs() -> impl Strategy<Value = Vec<(String, Value)>> {
        proptest::collection::vec(("[a-e]{0,3}", value()), 0..5)
    }

    proptest! {
        /// Reordered map keys (at any depth), kwargs given in another order, and resources
        /// reordered or repeated: the same key.
        #[test]
        fn reordering_gives_the_same_key(
            args in proptest::collection::vec(value(), 0..4),
            kw in kwargs(),
            locs in locs(),
            seed in any::<u64>(),
        ) {
            let kwargs: BTreeMap<String, Value> = kw.iter().cloned().collect();
            let a = CacheKey::new("f", None, &locs, &args, &kwargs).unwrap();

            let args2: Vec<Value> = args.iter().map(|v| shuffle_maps(v, seed)).collect();
            let mut kw2: Vec<(String, Value)> = kwargs
                .iter()
                .map(|(k, v)| (k.clone(), shuffle_maps(v, seed)))
                .collect();
            kw2.reverse();
            let kwargs2: BTreeMap<String, Value> = kw2.into_iter().collect();
            let mut locs2 = locs.clone();
            locs2.reverse();
            locs2.extend(locs.iter().take(2).cloned());
            let b = CacheKey::new("f", None, &locs2, &args2, &kwargs2).unwrap();

            prop_assert_eq!(a.digest(), b.digest());
            prop_assert_eq!(&a, &b);
        }

        /// Different resource sets: different keys.
        #[test]
        fn different_resources_give_different_keys(
            args in proptest::collection::vec(value(), 0..3),
            l1 in locs(),
            l2 in locs(),
        ) {
            let set = |l: &[String]| l.iter().cloned().collect::<std::collections::BTreeSet<_>>();
            prop_assume!(set(&l1) != set(&l2));
            let a = CacheKey::new("f", None, &l1, &args, &BTreeMap::new()).unwrap();
            let b = CacheKey::new("f", None, &l2, &args, &BTreeMap::new()).unwrap();
            prop_assert_ne!(a, b);
        }

        /// The same number in any wire width is one key: `1u8` and `1u64` alike.
        #[test]
        fn integer_width_gives_the_same_key(n in any::<u64>()) {
            let mut wide = vec![0xcf];
            wide.extend_from_slice(&n.to_be_bytes());
            let read = rmpv::decode::read_value(&mut &wide[..]).unwrap();
            let narrow = key("f", &[], vec![Value::from(n)], &[]);
            prop_assert_eq!(key("f", &[], vec![read], &[]), narrow);
            if let Ok(small) = u8::try_from(n) {
                prop_assert_eq!(key("f", &[], vec![Value::from(small)], &[("k", Value::from(small))]),
                                key("f", &[], vec![Value::from(n)], &[("k", Value::from(n))]));
            }
        }

        /// `str` and `bin` with the same bytes never share a key.
        #[test]
        fn str_is_not_bin(s in ".{0,40}") {
            let a = key("f", &[], vec![Value::from(s.as_str())], &[]);
            let b = key("f", &[], vec![Value::Binary(s.clone().into_bytes())], &[]);
            prop_assert_ne!(a, b);
        }

        /// Ord agrees with Eq, and Hash with Eq.
        #[test]
        fn order_and_equality_agree(a in value(), b in value()) {
            let ka = key("f", &[], vec![a], &[]);
            let kb = key("f", &[], vec![b], &[]);
            prop_assert_eq!(ka == kb, ka.cmp(&kb) == Ordering::Equal);
            if ka == kb {
                prop_assert_eq!(ka.digest(), kb.digest());
            }
        }
    }
}
