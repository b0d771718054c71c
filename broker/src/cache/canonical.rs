//! Canonical msgpack of a call's resolved arguments (design section 4.2: the cache key hashes
//! these bytes, and a hit compares them in full).
//!
//! Two calls a worker cannot tell apart give the same bytes; two it can tell apart never do.
//! The rules:
//! - **integers** in their smallest encoding, by value: `1` sent as `u8`, `u64` or `i16` is one
//!   form (positive fixint `0x01`); negatives use the smallest signed form;
//! - **`str` and `bin` stay distinct** (`"a"` is not `b"a"`); a `str` keeps its bytes as sent,
//!   invalid UTF-8 included;
//! - **floats as given**: the width stays (`f32` 1.5 is not `f64` 1.5, as a typed worker may
//!   refuse one of them), the bits stay (`-0.0` is not `0.0`), except that every NaN becomes
//!   the one quiet NaN of its width (payload and sign bits carry nothing a function may rely on);
//! - **maps** list their entries sorted bytewise by the canonical bytes of their keys, at every
//!   depth; entries with equal keys (msgpack allows them) keep their order, so such maps are
//!   at worst a missed hit, never a wrong one;
//! - **lengths** of `str`, `bin`, `ext`, arrays and maps in their smallest header.
//!
//! The walk recurses, bounded by [`MAX_DEPTH`] (deeper arguments are refused: not cached). The
//! protocol already refuses bodies nested deeper than its `max_depth` (64 by default). Map keys
//! are encoded apart to be sorted, so a key nested inside keys is copied once per level: at most
//! `MAX_DEPTH` times its size, and only for keys that are themselves maps or arrays.

use std::collections::BTreeMap;

use mpreg_protocol::Value;
use rmp::Marker;

/// Deepest container nesting encoded (the outer `[args, kwargs]` array counts as 1): bounds the
/// recursion. Twice the protocol's default `max_depth`, so only a broker configured with a
/// larger limit can meet it.
pub const MAX_DEPTH: usize = 128;

/// The one NaN of each width: the quiet NaN with no payload and the sign bit clear.
const CANONICAL_NAN_F32: u32 = 0x7fc0_0000;
const CANONICAL_NAN_F64: u64 = 0x7ff8_0000_0000_0000;

/// Why a call's arguments have no canonical form (the call is then not cached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    /// Containers nest deeper than [`MAX_DEPTH`].
    #[error("the arguments nest deeper than {limit} levels")]
    TooDeep {
        /// The limit.
        limit: usize,
    },
    /// A string, binary, array or map longer than msgpack can describe (2^32 - 1).
    #[error("a value of length {len} is longer than msgpack allows")]
    TooLong {
        /// Its length (bytes or items).
        len: usize,
    },
}

/// The canonical bytes of a call: a two-element array `[args, kwargs]`, itself valid msgpack.
pub fn encode_call(
    args: &[Value],
    kwargs: &BTreeMap<String, Value>,
) -> Result<Vec<u8>, CanonicalError> {
    let mut out = Vec::new();
    write_array_len(&mut out, 2)?;
    write_array_len(&mut out, args.len())?;
    for a in args {
        write_value(&mut out, a, 2)?;
    }
    // Sorted by the canonical bytes of the key, which is not `String` order: the header comes
    // first, so a shorter fixstr sorts before a longer one.
    let mut entries = Vec::with_capacity(kwargs.len());
    for (k, v) in kwargs {
        let mut key = Vec::with_capacity(k.len() + 5);
        write_str(&mut key, k.as_bytes())?;
        entries.push((key, v));
    }
    write_sorted_map(&mut out, entries, 2)?;
    Ok(out)
}

/// Appends the canonical bytes of `value` to `out`; `value` sits at nesting `depth` (a
/// top-level value: 0).
pub fn encode_value(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<(), CanonicalError> {
    write_value(out, value, depth)
}

fn write_value(out: &mut Vec<u8>, value: &Value, depth: usize) -> Result<(), CanonicalError> {
    match value {
        Value::Nil => out.push(Marker::Null.to_u8()),
        Value::Boolean(b) => out.push(if *b { Marker::True } else { Marker::False }.to_u8()),
        Value::Integer(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => write_uint(out, u),
            (None, Some(i)) => write_negative(out, i),
            // rmpv holds every integer as a u64 or a negative i64.
            (None, None) => out.push(Marker::Null.to_u8()),
        },
        Value::F32(f) => {
            let bits = if f.is_nan() {
                CANONICAL_NAN_F32
            } else {
                f.to_bits()
            };
            out.push(Marker::F32.to_u8());
            out.extend_from_slice(&bits.to_be_bytes());
        }
        Value::F64(f) => {
            let bits = if f.is_nan() {
                CANONICAL_NAN_F64
            } else {
                f.to_bits()
            };
            out.push(Marker::F64.to_u8());
            out.extend_from_slice(&bits.to_be_bytes());
        }
        Value::String(s) => write_str(out, s.as_bytes())?,
        Value::Binary(b) => {
            let len = len_u32(b.len())?;
            if let Ok(n) = u8::try_from(len) {
                out.extend_from_slice(&[Marker::Bin8.to_u8(), n]);
            } else if let Ok(n) = u16::try_from(len) {
                out.push(Marker::Bin16.to_u8());
                out.extend_from_slice(&n.to_be_bytes());
            } else {
                out.push(Marker::Bin32.to_u8());
                out.extend_from_slice(&len.to_be_bytes());
            }
            out.extend_from_slice(b);
        }
        Value::Ext(ty, data) => {
            write_ext_header(out, data.len(), *ty)?;
            out.extend_from_slice(data);
        }
        Value::Array(items) => {
            let inner = deeper(depth)?;
            write_array_len(out, items.len())?;
            for item in items {
                write_value(out, item, inner)?;
            }
        }
        Value::Map(pairs) => {
            let inner = deeper(depth)?;
            let mut entries = Vec::with_capacity(pairs.len());
            for (k, v) in pairs {
                let mut key = Vec::new();
                write_value(&mut key, k, inner)?;
                entries.push((key, v));
            }
            write_sorted_map(out, entries, inner)?;
        }
    }
    Ok(())
}

/// Writes a map whose keys are already encoded: sorted by those bytes (stable, so equal keys
/// keep their order), values encoded at `depth`.
fn write_sorted_map(
    out: &mut Vec<u8>,
    mut entries: Vec<(Vec<u8>, &Value)>,
    depth: usize,
) -> Result<(), CanonicalError> {
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    write_map_len(out, entries.len())?;
    for (key, value) in entries {
        out.extend_from_slice(&key);
        write_value(out, value, depth)?;
    }
    Ok(())
}

/// The depth of a container's items, if allowed.
fn deeper(depth: usize) -> Result<usize, CanonicalError> {
    let inner = depth + 1;
    if inner >= MAX_DEPTH {
        return Err(CanonicalError::TooDeep { limit: MAX_DEPTH });
    }
    Ok(inner)
}

fn len_u32(len: usize) -> Result<u32, CanonicalError> {
    u32::try_from(len).map_err(|_| CanonicalError::TooLong { len })
}

fn write_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        out.push(Marker::FixPos(n as u8).to_u8());
    } else if let Ok(b) = u8::try_from(n) {
        out.extend_from_slice(&[Marker::U8.to_u8(), b]);
    } else if let Ok(w) = u16::try_from(n) {
        out.push(Marker::U16.to_u8());
        out.extend_from_slice(&w.to_be_bytes());
    } else if let Ok(w) = u32::try_from(n) {
        out.push(Marker::U32.to_u8());
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        out.push(Marker::U64.to_u8());
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// `n < 0` (non-negative integers always take the unsigned forms).
fn write_negative(out: &mut Vec<u8>, n: i64) {
    if n >= -32 {
        out.push(Marker::FixNeg(n as i8).to_u8());
    } else if let Ok(b) = i8::try_from(n) {
        out.push(Marker::I8.to_u8());
        out.extend_from_slice(&b.to_be_bytes());
    } else if let Ok(w) = i16::try_from(n) {
        out.push(Marker::I16.to_u8());
        out.extend_from_slice(&w.to_be_bytes());
    } else if let Ok(w) = i32::try_from(n) {
        out.push(Marker::I32.to_u8());
        out.extend_from_slice(&w.to_be_bytes());
    } else {
        out.push(Marker::I64.to_u8());
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn write_str(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), CanonicalError> {
    let len = len_u32(bytes.len())?;
    if len < 32 {
        out.push(Marker::FixStr(len as u8).to_u8());
    } else if let Ok(n) = u8::try_from(len) {
        out.extend_from_slice(&[Marker::Str8.to_u8(), n]);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(Marker::Str16.to_u8());
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(Marker::Str32.to_u8());
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(bytes);
    Ok(())
}

fn write_array_len(out: &mut Vec<u8>, len: usize) -> Result<(), CanonicalError> {
    let len = len_u32(len)?;
    if len < 16 {
        out.push(Marker::FixArray(len as u8).to_u8());
    } else if let Ok(n) = u16::try_from(len) {
        out.push(Marker::Array16.to_u8());
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(Marker::Array32.to_u8());
        out.extend_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

fn write_map_len(out: &mut Vec<u8>, len: usize) -> Result<(), CanonicalError> {
    let len = len_u32(len)?;
    if len < 16 {
        out.push(Marker::FixMap(len as u8).to_u8());
    } else if let Ok(n) = u16::try_from(len) {
        out.push(Marker::Map16.to_u8());
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(Marker::Map32.to_u8());
        out.extend_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

fn write_ext_header(out: &mut Vec<u8>, len: usize, ty: i8) -> Result<(), CanonicalError> {
    let len = len_u32(len)?;
    let fixed = match len {
        1 => Some(Marker::FixExt1),
        2 => Some(Marker::FixExt2),
        4 => Some(Marker::FixExt4),
        8 => Some(Marker::FixExt8),
        16 => Some(Marker::FixExt16),
        _ => None,
    };
    if let Some(marker) = fixed {
        out.push(marker.to_u8());
    } else if let Ok(n) = u8::try_from(len) {
        out.extend_from_slice(&[Marker::Ext8.to_u8(), n]);
    } else if let Ok(n) = u16::try_from(len) {
        out.push(Marker::Ext16.to_u8());
        out.extend_from_slice(&n.to_be_bytes());
    } else {
        out.push(Marker::Ext32.to_u8());
        out.extend_from_slice(&len.to_be_bytes());
    }
    out.extend_from_slice(&ty.to_be_bytes());
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(&mut out, v, 0).unwrap();
        out
    }

    /// rmpv's own encoder: an independent oracle for everything except map order and NaN.
    fn rmpv_bytes(v: &Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn decode(bytes: &[u8]) -> Value {
        let mut rd = bytes;
        let v = rmpv::decode::read_value(&mut rd).unwrap();
        assert!(rd.is_empty(), "trailing bytes");
        v
    }

    #[test]
    fn golden_bytes() {
        let cases: Vec<(Value, Vec<u8>)> = vec![
            (Value::from(1u8), vec![0x01]),
            (Value::from(200u64), vec![0xcc, 200]),
            (Value::from(-1i64), vec![0xff]),
            (Value::from(-33i64), vec![0xd0, 0xdf]),
            (Value::from(-129i64), vec![0xd1, 0xff, 0x7f]),
            (Value::from("a"), vec![0xa1, b'a']),
            (Value::Binary(b"a".to_vec()), vec![0xc4, 1, b'a']),
            (
                Value::F32(f32::from_bits(0xffc0_0001)),
                vec![0xca, 0x7f, 0xc0, 0, 0],
            ),
            (
                Value::F64(-f64::NAN),
                vec![0xcb, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0],
            ),
            (Value::Ext(-1, vec![0; 4]), vec![0xd6, 0xff, 0, 0, 0, 0]),
            (Value::Ext(5, vec![7; 3]), vec![0xc7, 3, 5, 7, 7, 7]),
            (
                // {"bb": 1, "c": 2}: "c" (0xa1..) sorts before "bb" (0xa2..).
                Value::Map(vec![
                    (Value::from("bb"), Value::from(1)),
                    (Value::from("c"), Value::from(2)),
                ]),
                vec![0x82, 0xa1, b'c', 0x02, 0xa2, b'b', b'b', 0x01],
            ),
        ];
        for (value, want) in cases {
            assert_eq!(canon(&value), want, "{value:?}");
        }
        let kwargs = BTreeMap::from([("bb".to_string(), Value::Nil), ("c".into(), Value::Nil)]);
        assert_eq!(
            encode_call(&[Value::from(true)], &kwargs).unwrap(),
            vec![0x92, 0x91, 0xc3, 0x82, 0xa1, b'c', 0xc0, 0xa2, b'b', b'b', 0xc0]
        );
    }

    /// At each boundary of each integer width, the smallest form (as rmpv writes it).
    #[test]
    fn integer_boundaries() {
        let mut values: Vec<Value> = Vec::new();
        for b in [7u32, 8, 16, 32] {
            let edge = 1u64 << b;
            values.extend([edge - 1, edge, edge + 1].map(Value::from));
        }
        values.push(Value::from(u64::MAX));
        for b in [5u32, 7, 15, 31] {
            let edge = -(1i64 << b);
            values.extend([edge + 1, edge, edge - 1].map(Value::from));
        }
        values.push(Value::from(i64::MIN));
        for v in values {
            assert_eq!(canon(&v), rmpv_bytes(&v), "{v:?}");
        }
        assert_eq!(canon(&Value::from(65_536u64)), vec![0xce, 0, 1, 0, 0]);
        assert_eq!(
            canon(&Value::from(-32_769i64)),
            vec![0xd2, 0xff, 0xff, 0x7f, 0xff]
        );
    }

    #[test]
    fn wide_integer_encodings_read_to_one_form() {
        // 1 as u8, u16, u32, u64, i8, i16, i32, i64 on the wire.
        let wire: [&[u8]; 8] = [
            &[0xcc, 1],
            &[0xcd, 0, 1],
            &[0xce, 0, 0, 0, 1],
            &[0xcf, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0xd0, 1],
            &[0xd1, 0, 1],
            &[0xd2, 0, 0, 0, 1],
            &[0xd3, 0, 0, 0, 0, 0, 0, 0, 1],
        ];
        for w in wire {
            assert_eq!(canon(&decode(w)), vec![0x01], "{w:?}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let mut v = Value::Nil;
        for _ in 0..MAX_DEPTH - 1 {
            v = Value::Array(vec![v]);
        }
        assert!(encode_value(&mut Vec::new(), &v, 0).is_ok());
        let too_deep = Value::Map(vec![(Value::Nil, v)]);
        assert_eq!(
            encode_value(&mut Vec::new(), &too_deep, 0),
            Err(CanonicalError::TooDeep { limit: MAX_DEPTH })
        );
    }

    /// Any value: every scalar form, nested arrays and maps whose keys may be containers too.
    pub(crate) fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-200i64..300).prop_map(Value::from),
            // Every magnitude, so that each integer width is drawn.
            (any::<u64>(), 0u32..64).prop_map(|(x, s)| Value::from(x >> s)),
            (any::<i64>(), 0u32..64).prop_map(|(x, s)| Value::from(-((x >> s).abs()))),
            any::<u32>().prop_map(|b| Value::F32(f32::from_bits(b))),
            any::<u64>().prop_map(|b| Value::F64(f64::from_bits(b))),
            Just(Value::F64(f64::NAN)),
            Just(Value::F64(-0.0)),
            "[ab]{0,3}".prop_map(Value::from),
            ".{0,40}".prop_map(Value::from),
            proptest::collection::vec(any::<u8>(), 0..4).prop_map(Value::Binary),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..20))
                .prop_map(|(t, d)| Value::Ext(t, d)),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..20).prop_map(Value::Array),
                proptest::collection::vec((inner.clone(), inner), 0..6).prop_map(Value::Map),
            ]
        })
    }

    /// An independent reading of the rules: NaNs replaced by the canonical ones, map entries
    /// stably sorted by rmpv's bytes of their (normalised) keys. rmpv writes the smallest
    /// headers, so its bytes of the normalised value are the canonical bytes.
    fn normalise(v: &Value) -> Value {
        match v {
            Value::F32(f) if f.is_nan() => Value::F32(f32::from_bits(CANONICAL_NAN_F32)),
            Value::F64(f) if f.is_nan() => Value::F64(f64::from_bits(CANONICAL_NAN_F64)),
            Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
            Value::Map(pairs) => {
                let mut pairs: Vec<(Value, Value)> = pairs
                    .iter()
                    .map(|(k, x)| (normalise(k), normalise(x)))
                    .collect();
                pairs.sort_by_key(|(k, _)| rmpv_bytes(k));
                Value::Map(pairs)
            }
            other => other.clone(),
        }
    }

    /// Shuffles the entries of every map, at every depth, by a seed.
    pub(crate) fn shuffle_maps(v: &Value, seed: u64) -> Value {
        match v {
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, x)| shuffle_maps(x, seed ^ i as u64))
                    .collect(),
            ),
            Value::Map(pairs) => {
                let mut pairs: Vec<(Value, Value)> = pairs
                    .iter()
                    .enumerate()
                    .map(|(i, (k, x))| {
                        let s = seed.wrapping_mul(31).wrapping_add(i as u64);
                        (shuffle_maps(k, s), shuffle_maps(x, s ^ 7))
                    })
                    .collect();
                // Rotate, then reverse on odd seeds: a permutation that moves entries. Equal
                // keys must keep their order, so only maps with distinct keys are permuted.
                let keys: Vec<Vec<u8>> = pairs.iter().map(|(k, _)| canon(k)).collect();
                let distinct = keys.iter().enumerate().all(|(i, k)| !keys[..i].contains(k));
                if distinct && !pairs.is_empty() {
                    let r = (seed as usize) % pairs.len();
                    pairs.rotate_left(r);
                    if seed % 2 == 1 {
                        pairs.reverse();
                    }
                }
                Value::Map(pairs)
            }
            other => other.clone(),
        }
    }

    proptest! {
        /// The canonical bytes are rmpv's bytes of the normalised value. As rmpv's encoding is
        /// faithful (it reads back to the same value), two values give the same canonical
        /// bytes exactly when they normalise to the same value.
        #[test]
        fn equals_rmpv_of_the_normalised_value(v in value()) {
            prop_assert_eq!(canon(&v), rmpv_bytes(&normalise(&v)));
        }

        /// The bytes are msgpack, and canonical again once read back.
        #[test]
        fn canonical_bytes_are_a_fixed_point(v in value()) {
            let bytes = canon(&v);
            prop_assert_eq!(canon(&decode(&bytes)), bytes);
        }

        /// Reordering map entries, at any depth, changes nothing.
        #[test]
        fn map_order_does_not_matter(v in value(), seed in any::<u64>()) {
            prop_assert_eq!(canon(&shuffle_maps(&v, seed)), canon(&v));
        }

        /// Values that normalise differently never share bytes.
        #[test]
        fn different_values_differ(a in value(), b in value()) {
            prop_assume!(rmpv_bytes(&normalise(&a)) != rmpv_bytes(&normalise(&b)));
            prop_assert_ne!(canon(&a), canon(&b));
        }

        /// Every width an integer fits in reads back to the same canonical bytes.
        #[test]
        fn integer_width_does_not_matter(n in any::<i64>()) {
            let want = canon(&Value::from(n));
            let mut forms: Vec<Vec<u8>> = Vec::new();
            if let Ok(u) = u64::try_from(n) {
                forms.push([&[0xcf][..], &u.to_be_bytes()].concat());
                if let Ok(x) = u32::try_from(u) { forms.push([&[0xce][..], &x.to_be_bytes()].concat()); }
                if let Ok(x) = u16::try_from(u) { forms.push([&[0xcd][..], &x.to_be_bytes()].concat()); }
                if let Ok(x) = u8::try_from(u) { forms.push(vec![0xcc, x]); }
            }
            forms.push([&[0xd3][..], &n.to_be_bytes()].concat());
            if let Ok(x) = i32::try_from(n) { forms.push([&[0xd2][..], &x.to_be_bytes()].concat()); }
            if let Ok(x) = i16::try_from(n) { forms.push([&[0xd1][..], &x.to_be_bytes()].concat()); }
            if let Ok(x) = i8::try_from(n) { forms.push(vec![0xd0, x as u8]); }
            for f in forms {
                prop_assert_eq!(canon(&decode(&f)), want.clone(), "{:?}", f);
            }
        }
    }
}
