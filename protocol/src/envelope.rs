//! Frames around a body: `[version tag, message type, body]`, preceded on a ROUTER by the
//! routing id and, for REQ peers, an empty delimiter. The compact form carries the same three
//! parts in one frame, `MPREG/1 NUL type NUL body`: one frame instead of three matters where
//! every frame costs (CURVE encrypts each frame separately).

use thiserror::Error;

use crate::error_code::ErrorCode;

/// The version tag frame of this protocol.
pub const VERSION: &[u8] = b"MPREG/1";

/// The start of a compact frame: the version tag and a NUL.
pub const COMPACT_PREFIX: &[u8] = b"MPREG/1\0";

/// The three protocol parts of a message, borrowed from the received frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The message type (ASCII, e.g. `plan`).
    pub kind: &'a [u8],
    /// The msgpack body.
    pub body: &'a [u8],
    /// True when the message came as one compact frame.
    pub compact: bool,
}

/// The compact frame of a message: `MPREG/1 NUL kind NUL body`.
pub fn compact_frame(kind: &[u8], body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(COMPACT_PREFIX.len() + kind.len() + 1 + body.len());
    frame.extend_from_slice(COMPACT_PREFIX);
    frame.extend_from_slice(kind);
    frame.push(0);
    frame.extend_from_slice(body);
    frame
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

/// Parses the protocol frames (routing frames already removed): three frames, or one compact
/// frame.
pub fn parse<F: AsRef<[u8]>>(frames: &[F]) -> Result<Envelope<'_>, EnvelopeError> {
    if let [frame] = frames {
        let frame = frame.as_ref();
        if let Some(rest) = frame.strip_prefix(COMPACT_PREFIX) {
            // The type is short ASCII: look for its NUL in the first 64 bytes only.
            if let Some(end) = rest.iter().take(64).position(|&b| b == 0) {
                return Ok(Envelope {
                    kind: &rest[..end],
                    body: &rest[end + 1..],
                    compact: true,
                });
            }
        } else if let Some(nul) = frame.iter().take(32).position(|&b| b == 0) {
            if frame.starts_with(b"MPREG/") {
                return Err(EnvelopeError::Version {
                    got: String::from_utf8_lossy(&frame[..nul]).into_owned(),
                });
            }
        }
        return Err(EnvelopeError::FrameCount { got: 1 });
    }
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
        compact: false,
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
    fn parses_a_compact_frame() {
        let frame = compact_frame(b"ping", b"\x81\xa2id\x01");
        assert_eq!(&frame[..8], b"MPREG/1\0");
        let frames = [&frame];
        let env = parse(&frames).unwrap();
        assert_eq!(
            (env.kind, env.body, env.compact),
            (&b"ping"[..], &b"\x81\xa2id\x01"[..], true)
        );
        // An empty body and bodies containing NULs are fine; a missing type end is not.
        let frames = [compact_frame(b"status", b"\0\0")];
        let env = parse(&frames).unwrap();
        assert_eq!(env.body, b"\0\0");
        assert_eq!(
            parse(&[b"MPREG/1\0ping".to_vec()]),
            Err(EnvelopeError::FrameCount { got: 1 })
        );
        assert_eq!(
            parse(&[b"hello".to_vec()]),
            Err(EnvelopeError::FrameCount { got: 1 })
        );
        let err = parse(&[b"MPREG/2\0ping\0x".to_vec()]).unwrap_err();
        assert_eq!(err.code(), ErrorCode::UnsupportedVersion);
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
