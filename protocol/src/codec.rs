//! Body encoding: msgpack maps with field names, checked before decoding.

use serde::de::DeserializeOwned;
use serde::Serialize;
use thiserror::Error;

use crate::error_code::ErrorCode;
use crate::limits::Limits;
use crate::msgpack_scan::{scan, ScanError};

/// Why a body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The body is larger than the limit.
    #[error("body of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Body size in bytes.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not one well-formed msgpack value within the nesting limit.
    #[error("{0}")]
    Structure(#[from] ScanError),
    /// The msgpack is well formed but a field is missing or has the wrong type.
    #[error("field `{path}`: {message}")]
    Field {
        /// Where in the body (`steps[2].name`; `.` for the body itself).
        path: String,
        /// What the decoder expected.
        message: String,
    },
    /// The message type frame names no message this peer accepts.
    #[error("unknown message type `{kind}`")]
    UnknownKind {
        /// The type frame, lossily decoded.
        kind: String,
    },
}

impl DecodeError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            DecodeError::Structure(ScanError::TooDeep { .. }) => ErrorCode::NestingTooDeep,
            DecodeError::Structure(_) | DecodeError::Field { .. } => ErrorCode::InvalidBody,
            DecodeError::UnknownKind { .. } => ErrorCode::UnknownMessageType,
        }
    }
}

/// Encodes a message body as a msgpack map with field names.
pub fn encode_body<T: Serialize + ?Sized>(message: &T) -> Vec<u8> {
    // Most bodies are small: one allocation instead of the three or four of growing from empty.
    let mut body = Vec::with_capacity(INITIAL_BODY_BYTES);
    rmp_serde::encode::write_named(&mut body, message)
        .expect("protocol messages serialize infallibly: plain structs with string keys");
    body
}

/// A message encoded straight into its compact frame, `MPREG/1 NUL kind NUL body`: one buffer,
/// no copy of the body (the bytes are those of [`crate::compact_frame`] of [`encode_body`]).
/// Returns the frame and the body's length.
pub fn encode_compact<T: Serialize + ?Sized>(kind: &[u8], message: &T) -> (Vec<u8>, usize) {
    let header = crate::envelope::COMPACT_PREFIX.len() + kind.len() + 1;
    let mut frame = Vec::with_capacity(header + INITIAL_BODY_BYTES);
    frame.extend_from_slice(crate::envelope::COMPACT_PREFIX);
    frame.extend_from_slice(kind);
    frame.push(0);
    rmp_serde::encode::write_named(&mut frame, message)
        .expect("protocol messages serialize infallibly: plain structs with string keys");
    let body = frame.len() - header;
    (frame, body)
}

/// The first allocation of an encoded body: a single-step plan, a reply or a small event fits.
const INITIAL_BODY_BYTES: usize = 256;

/// Decodes a body after checking its size, structure and nesting against `limits`.
pub fn decode_body<T: DeserializeOwned>(body: &[u8], limits: &Limits) -> Result<T, DecodeError> {
    if body.len() > limits.max_message_bytes {
        return Err(DecodeError::TooLarge {
            size: body.len(),
            max: limits.max_message_bytes,
        });
    }
    scan(body, limits.max_depth)?;
    // Fast path without path tracking; only a failure is decoded again to name the field.
    if let Ok(value) = rmp_serde::from_slice(body) {
        return Ok(value);
    }
    let mut de = rmp_serde::Deserializer::from_read_ref(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| DecodeError::Field {
        path: e.path().to_string(),
        message: e.inner().to_string(),
    })
}

/// Best effort: the `id` field of a body that failed to decode, so the error reply can still be
/// matched to its request. Reads only the top-level map, skipping other values without
/// recursion, so it works on bodies that are too deep, too large or have wrong field types.
/// Returns `None` when the body is not a map with an unsigned `id`. The work is bounded by the
/// body's length (the transport caps frames), `_limits` is kept for future checks.
pub fn peek_request_id(body: &[u8], _limits: &Limits) -> Option<u64> {
    let mut rest = body;
    let entries = rmp::decode::read_map_len(&mut rest).ok()?;
    for _ in 0..entries {
        let key_len = rmp::decode::read_str_len(&mut rest).ok()? as usize;
        let key = rest.get(..key_len)?;
        rest = &rest[key_len..];
        if key == b"id" {
            return rmp::decode::read_int(&mut rest).ok();
        }
        let end = crate::msgpack_scan::value_end(rest, 0)?;
        rest = &rest[end..];
    }
    None
}

/// Serde helper: a msgpack `nil` decodes as the type's default, so clients in languages that
/// send `None`/`null` for empty fields are accepted.
pub(crate) fn nil_as_default<'de, D, T>(de: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    use serde::Deserialize;
    Ok(Option::<T>::deserialize(de)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compact_encoding_is_the_compact_frame_of_the_body() {
        use crate::{compact_frame, ClientToBroker, PlanRequest, Step, Value};
        let mut plan = PlanRequest {
            id: 9,
            steps: vec![Step::new("a", "echo", vec![Value::Binary(vec![7; 300])])],
            deadline_ms: Some(5),
            all_results: true,
            progress: false,
            progress_topic: None,
            plan: None,
            trace: false,
        };
        for extra in [0, 1, 500] {
            plan.steps[0]
                .kwargs
                .insert("k".into(), Value::from("x".repeat(extra)));
            let (frame, body_len) = encode_compact(b"plan", &plan);
            let body = encode_body(&plan);
            assert_eq!(frame, compact_frame(b"plan", &body));
            assert_eq!(body_len, body.len());
            let message = ClientToBroker::Plan(plan.clone());
            assert_eq!(message.encode_compact(), (frame, body_len));
        }
    }

    #[test]
    fn peek_finds_the_id_past_deep_or_wrong_fields() {
        let limits = Limits::default();
        // {"steps": [[[...100k...]]], "id": 7}
        let mut deep = vec![0x82, 0xa5, b's', b't', b'e', b'p', b's'];
        deep.extend(std::iter::repeat_n(0x91u8, 100_000));
        deep.push(0xc0);
        deep.extend_from_slice(&[0xa2, b'i', b'd', 0x07]);
        assert_eq!(peek_request_id(&deep, &limits), Some(7));
        // {"id": "x"} and not-a-map and truncated
        assert_eq!(
            peek_request_id(&[0x81, 0xa2, b'i', b'd', 0xa1, b'x'], &limits),
            None
        );
        assert_eq!(peek_request_id(&[0x93, 1, 2, 3], &limits), None);
        assert_eq!(
            peek_request_id(&[0x82, 0xa1, b'a', 0xdd, 0xff, 0xff, 0xff, 0xff], &limits),
            None
        );
    }
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Probe {
        id: u64,
        name: String,
    }

    #[test]
    fn decode_names_the_bad_field() {
        let body = encode_body(&rmpv::Value::Map(vec![
            ("id".into(), 7.into()),
            ("name".into(), 5.into()),
        ]));
        let err = decode_body::<Probe>(&body, &Limits::default()).unwrap_err();
        match &err {
            DecodeError::Field { path, message } => {
                assert_eq!(path, "name");
                assert!(message.contains("expected a string"), "{message}");
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(err.code(), ErrorCode::InvalidBody);
        assert_eq!(peek_request_id(&body, &Limits::default()), Some(7));
    }

    #[test]
    fn size_and_depth_limits_map_to_codes() {
        let limits = Limits {
            max_message_bytes: 8,
            ..Limits::default()
        };
        let big = encode_body(&Probe {
            id: 1,
            name: "long enough".into(),
        });
        let err = decode_body::<Probe>(&big, &limits).unwrap_err();
        assert_eq!(err.code(), ErrorCode::MessageTooLarge);

        let mut deep = vec![0x91u8; 1000];
        deep.push(0);
        let err = decode_body::<Probe>(&deep, &Limits::default()).unwrap_err();
        assert_eq!(err.code(), ErrorCode::NestingTooDeep);
        assert_eq!(peek_request_id(&deep, &Limits::default()), None);
    }

    #[test]
    fn bodies_are_maps_with_field_names() {
        let body = encode_body(&Probe {
            id: 1,
            name: "x".into(),
        });
        // fixmap of 2, "id", 1, "name", "x"
        assert_eq!(body, b"\x82\xa2id\x01\xa4name\xa1x");
    }
}
