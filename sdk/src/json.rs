//! JSON <-> msgpack value conversion, as the `mpreg` CLI reads arguments and prints results.
//!
//! | msgpack | JSON |
//! |---|---|
//! | nil, bool, string | null, bool, string |
//! | integer | integer (u64 or i64, never a float) |
//! | float | number (`NaN` and infinities, which JSON cannot carry, become `null`) |
//! | array | array |
//! | map with string keys | object |
//! | map with other keys | object whose keys are the keys' JSON text (`{1: "a"}` -> `{"1": "a"}`) |
//! | binary | `{"$bin": "<lowercase hex>"}` |
//! | extension | `{"$ext": [<type>, "<hex>"]}` |
//!
//! [`from_json`] reads the two tagged objects back as binary and extension values, so every
//! value made of nil, bools, integers, finite `f64`s, strings, binary, arrays and string-keyed
//! maps survives `from_json(to_json(v))`. What does not: `f32` comes back as `f64`, non-string
//! map keys come back as strings, and a map whose only entry is `"$bin"` or `"$ext"` is read
//! back as the tagged value it looks like.
//!
//! ```
//! use mpreg::json::{from_json, to_json};
//! use mpreg::Value;
//!
//! let v = Value::Array(vec![Value::from(1u64), Value::from("a"), Value::from(vec![0xffu8])]);
//! let j = to_json(&v);
//! assert_eq!(j.to_string(), r#"[1,"a",{"$bin":"ff"}]"#);
//! assert_eq!(from_json(&j).unwrap(), v);
//! ```

use rmpv::Value;
use serde_json::{Map, Number, Value as Json};
use thiserror::Error;

/// The object key that marks binary data in JSON.
pub const BIN_KEY: &str = "$bin";
/// The object key that marks a msgpack extension value in JSON.
pub const EXT_KEY: &str = "$ext";

/// Why a JSON value cannot become a msgpack value.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JsonError {
    /// A `{"$bin": ...}` object whose value is not a string of hex digit pairs.
    #[error("`{path}`: {BIN_KEY} must be a string of hex digit pairs")]
    BadBinary {
        /// Where in the value (`.` for the value itself, `.args[1]` below it).
        path: String,
    },
    /// A `{"$ext": ...}` object that is not `[type (-128..=127), "<hex>"]`.
    #[error("`{path}`: {EXT_KEY} must be [type (-128..=127), \"<hex>\"]")]
    BadExtension {
        /// Where in the value.
        path: String,
    },
}

/// Converts a msgpack value to JSON (see the module docs for the mapping).
pub fn to_json(value: &Value) -> Json {
    match value {
        Value::Nil => Json::Null,
        Value::Boolean(b) => Json::Bool(*b),
        Value::Integer(i) => match (i.as_u64(), i.as_i64()) {
            (Some(u), _) => Json::Number(Number::from(u)),
            (None, Some(s)) => Json::Number(Number::from(s)),
            // An rmpv integer is always a u64 or an i64.
            (None, None) => Json::Null,
        },
        Value::F32(f) => float(f64::from(*f)),
        Value::F64(f) => float(*f),
        Value::String(s) => Json::String(match s.as_str() {
            Some(text) => text.to_string(),
            None => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        }),
        Value::Binary(bytes) => tagged(BIN_KEY, Json::String(hex_encode(bytes))),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Map(entries) => {
            let mut object = Map::with_capacity(entries.len());
            for (key, val) in entries {
                object.insert(key_text(key), to_json(val));
            }
            Json::Object(object)
        }
        Value::Ext(kind, bytes) => tagged(
            EXT_KEY,
            Json::Array(vec![
                Json::Number(Number::from(*kind)),
                Json::String(hex_encode(bytes)),
            ]),
        ),
    }
}

/// Converts JSON to a msgpack value (see the module docs for the mapping).
///
/// # Errors
/// [`JsonError`] when a `{"$bin": ..}` or `{"$ext": ..}` object is malformed.
pub fn from_json(json: &Json) -> Result<Value, JsonError> {
    let mut path = String::new();
    convert(json, &mut path)
}

fn convert(json: &Json, path: &mut String) -> Result<Value, JsonError> {
    Ok(match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Boolean(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                Value::from(u)
            } else if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                // serde_json numbers are u64, i64 or finite f64.
                Value::F64(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => {
            let mut out = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{index}]"));
                out.push(convert(item, path)?);
                path.truncate(len);
            }
            Value::Array(out)
        }
        Json::Object(object) => {
            if object.len() == 1 {
                if let Some(hex) = object.get(BIN_KEY) {
                    return binary(hex, path);
                }
                if let Some(ext) = object.get(EXT_KEY) {
                    return extension(ext, path);
                }
            }
            let mut out = Vec::with_capacity(object.len());
            for (key, val) in object {
                let len = path.len();
                path.push('.');
                path.push_str(key);
                out.push((Value::from(key.as_str()), convert(val, path)?));
                path.truncate(len);
            }
            Value::Map(out)
        }
    })
}

fn binary(hex: &Json, path: &str) -> Result<Value, JsonError> {
    hex.as_str()
        .and_then(hex_decode)
        .map(Value::Binary)
        .ok_or_else(|| JsonError::BadBinary { path: shown(path) })
}

fn extension(ext: &Json, path: &str) -> Result<Value, JsonError> {
    let parsed = match ext.as_array().map(Vec::as_slice) {
        Some([kind, data]) => kind
            .as_i64()
            .and_then(|k| i8::try_from(k).ok())
            .zip(data.as_str().and_then(hex_decode)),
        _ => None,
    };
    parsed
        .map(|(kind, data)| Value::Ext(kind, data))
        .ok_or_else(|| JsonError::BadExtension { path: shown(path) })
}

fn shown(path: &str) -> String {
    if path.is_empty() {
        ".".to_string()
    } else {
        path.to_string()
    }
}

fn float(f: f64) -> Json {
    Number::from_f64(f).map_or(Json::Null, Json::Number)
}

fn tagged(key: &str, value: Json) -> Json {
    let mut object = Map::with_capacity(1);
    object.insert(key.to_string(), value);
    Json::Object(object)
}

/// A map key as a JSON object key: strings as they are, anything else as its JSON text.
fn key_text(key: &Value) -> String {
    match key.as_str() {
        Some(s) => s.to_string(),
        None => to_json(key).to_string(),
    }
}

/// Lowercase hex of `bytes`.
pub fn hex_encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Bytes of a hex string (either case); `None` when it has an odd length or a non-hex digit.
pub fn hex_decode(hex: &str) -> Option<Vec<u8>> {
    let pairs = hex.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    let nibble = |d: u8| {
        char::from(d)
            .to_digit(16)
            .and_then(|n| u8::try_from(n).ok())
    };
    pairs
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn integers_stay_integers() {
        assert_eq!(to_json(&Value::from(u64::MAX)), json!(u64::MAX));
        assert_eq!(to_json(&Value::from(i64::MIN)), json!(i64::MIN));
        assert_eq!(from_json(&json!(u64::MAX)).unwrap(), Value::from(u64::MAX));
        assert_eq!(from_json(&json!(-3)).unwrap(), Value::from(-3i64));
        assert_eq!(from_json(&json!(2.5)).unwrap(), Value::F64(2.5));
        assert_eq!(to_json(&Value::F64(2.0)).to_string(), "2.0");
        assert_eq!(to_json(&Value::F64(f64::NAN)), Json::Null);
    }

    #[test]
    fn binary_and_extension_are_tagged_objects() {
        let v = Value::Binary(vec![0, 0xab, 0x10]);
        assert_eq!(to_json(&v), json!({"$bin": "00ab10"}));
        assert_eq!(from_json(&json!({"$bin": "00AB10"})).unwrap(), v);
        let e = Value::Ext(-5, vec![1, 2]);
        assert_eq!(to_json(&e), json!({"$ext": [-5, "0102"]}));
        assert_eq!(from_json(&to_json(&e)).unwrap(), e);
    }

    #[test]
    fn malformed_tags_name_their_path() {
        let err = from_json(&json!({"a": [1, {"$bin": "abc"}]})).unwrap_err();
        assert_eq!(
            err,
            JsonError::BadBinary {
                path: ".a[1]".into()
            }
        );
        let err = from_json(&json!({"$ext": [300, "00"]})).unwrap_err();
        assert_eq!(err, JsonError::BadExtension { path: ".".into() });
        // An object with more keys than the tag is an ordinary map.
        let plain = from_json(&json!({"$bin": "zz", "x": 1})).unwrap();
        assert!(matches!(plain, Value::Map(ref m) if m.len() == 2));
    }

    #[test]
    fn non_string_keys_render_as_json_text() {
        let v = Value::Map(vec![
            (Value::from(1), Value::from("a")),
            (Value::Array(vec![Value::Nil]), Value::from(true)),
            (Value::from("k"), Value::Nil),
        ]);
        assert_eq!(
            to_json(&v).to_string(),
            r#"{"1":"a","[null]":true,"k":null}"#
        );
    }

    #[test]
    fn hex_rejects_bad_input() {
        assert_eq!(hex_decode(""), Some(vec![]));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("0g"), None);
        assert_eq!(hex_decode("+1"), None);
        assert_eq!(hex_encode(&[0x0f, 0xf0]), "0ff0");
    }

    /// Values in the round-trippable subset: no f32, string keys that are not tags.
    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Nil),
            any::<bool>().prop_map(Value::Boolean),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::F64),
            ".*".prop_map(|s: String| Value::from(s)),
            proptest::collection::vec(any::<u8>(), 0..16).prop_map(Value::Binary),
            (any::<i8>(), proptest::collection::vec(any::<u8>(), 0..8))
                .prop_map(|(k, d)| Value::Ext(k, d)),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                // Distinct keys: JSON objects cannot repeat one.
                proptest::collection::btree_map("[a-z0-9_]{0,6}", inner, 0..8).prop_map(|m| {
                    Value::Map(m.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
                }),
            ]
        })
    }

    fn json_value() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<u64>().prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".*".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Json::Array),
                proptest::collection::btree_map("[a-z0-9_$]{0,6}", inner, 0..8)
                    .prop_filter("not a tag", |m| {
                        !(m.len() == 1 && (m.contains_key(BIN_KEY) || m.contains_key(EXT_KEY)))
                    })
                    .prop_map(|m| Json::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn msgpack_round_trips_through_json(v in value()) {
            let j = to_json(&v);
            // Through text too, as the CLI does.
            let reparsed: Json = serde_json::from_str(&j.to_string()).unwrap();
            prop_assert_eq!(from_json(&reparsed).unwrap(), v);
        }

        #[test]
        fn json_round_trips_through_msgpack(j in json_value()) {
            let v = from_json(&j).unwrap();
            prop_assert_eq!(to_json(&v), j);
        }
    }
}
