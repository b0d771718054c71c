//! Frames around a body: `[version tag, message type, body]`, preceded on a ROUTER by the
//! routing id and, for REQ peers, an empty delimiter.

use thiserror::Error;

use crate::error_code::ErrorCode;

/// The version tag frame of this protocol.
pub const VERSION: &[u8] = b"MPREG/1";

/// The three protocol frames of a message, borrowed from the received frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The message type frame (ASCII, e.g. `plan`).
    pub kind: &'a [u8],
    /// The msgpack body frame.
    pub body: &'a [u8],
}

/// Why frames do not form a message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EnvelopeError {
    /// Not exactly three protocol frames.
    #[error("expected 3 frames (version, type, body), got {got}")]
    FrameCount {
        /// How many protocol frames arrived.
        got: usize,
    },
    /// The version tag is not [`VERSION`].
    #[error("unsupported protocol version {got:?}; this peer speaks MPREG/1")]
    Version {
        /// The received tag, lossily decoded.
        got: String,
    },
}

impl EnvelopeError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            EnvelopeError::FrameCount { .. } => ErrorCode::MalformedMessage,
            EnvelopeError::Version { .. } => ErrorCode::UnsupportedVersion,
        }
    }
}

/// Parses the protocol frames (routing frames already removed).
pub fn parse<F: AsRef<[u8]>>(frames: &[F]) -> Result<Envelope<'_>, EnvelopeError> {
    let [version, kind, body] = frames else {
        return Err(EnvelopeError::FrameCount { got: frames.len() });
    };
    if version.as_ref() != VERSION {
        return Err(EnvelopeError::Version {
            got: String::from_utf8_lossy(version.as_ref())
                .chars()
                .take(32)
                .collect(),
        });
    }
    Ok(Envelope {
        kind: kind.as_ref(),
        body: body.as_ref(),
    })
}

/// How many leading frames of a message received on a ROUTER are routing frames: the routing
/// id, plus the empty delimiter a REQ peer adds. A reply must start with the same frames.
pub fn router_prefix_len<F: AsRef<[u8]>>(frames: &[F]) -> usize {
    match frames {
        [_, delimiter, ..] if delimiter.as_ref().is_empty() => 2,
        [] => 0,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_three_frames() {
        let frames: Vec<&[u8]> = vec![VERSION, b"ping", b"\x81\xa2id\x01"];
        let env = parse(&frames).unwrap();
        assert_eq!(env.kind, b"ping");
        assert_eq!(env.body, b"\x81\xa2id\x01");
    }

    #[test]
    fn rejects_bad_frames() {
        let two: Vec<&[u8]> = vec![VERSION, b"ping"];
        assert_eq!(parse(&two), Err(EnvelopeError::FrameCount { got: 2 }));
        let old: Vec<&[u8]> = vec![b"MPREG/0", b"ping", b""];
        let err = parse(&old).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
    }

    #[test]
    fn router_prefix_detects_req_delimiter() {
        let dealer: Vec<&[u8]> = vec![b"id", VERSION, b"ping", b"x"];
        let req: Vec<&[u8]> = vec![b"id", b"", VERSION, b"ping", b"x"];
        assert_eq!(router_prefix_len(&dealer), 1);
        assert_eq!(router_prefix_len(&req), 2);
        assert_eq!(router_prefix_len::<&[u8]>(&[]), 0);
    }
}
