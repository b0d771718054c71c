//! The frontend: frames as they come off the broker's ROUTER sockets (routing id, REQ
//! delimiter, three frames or one compact frame) become typed messages with their origin, or
//! a typed failure for a message that cannot be read. Pure: the shell calls it, then the
//! engine ([`feed_client`], [`feed_worker`]).

use std::time::Instant;

use mpreg_protocol::{
    parse_envelope, peek_request_id, router_prefix_len, ClientToBroker, DecodeError, ErrorCode,
    Limits, WorkerToBroker,
};

use crate::engine::{ClientOrigin, Engine, Failure, WorkerOrigin};
use crate::outbox::{ClientAddr, Outbox, WorkerAddr};

/// A message read from a socket: a typed message, or why it could not be read (with the
/// request id when the body still yields one).
#[derive(Debug)]
pub enum Decoded<T> {
    /// A message.
    Message(T),
    /// Not a readable message.
    Malformed {
        /// The request id read from the body, if any.
        id: Option<u64>,
        /// Why.
        failure: Failure,
    },
}

/// What the frontend needs to know: the limits, and the endpoints to point a lost peer to.
#[derive(Debug, Clone, Default)]
pub struct Frontend {
    /// Limits applied to every body.
    pub limits: Limits,
    /// The client endpoint (quoted to a client that reached the worker port).
    pub client_endpoint: String,
    /// The worker endpoint (quoted to a worker that reached the client port).
    pub worker_endpoint: String,
}

fn decode_failure(e: &DecodeError) -> Failure {
    let path = match e {
        DecodeError::Field { path, .. } => Some(path.clone()),
        _ => None,
    };
    Failure::Decode {
        code: e.code(),
        message: e.to_string(),
        path,
    }
}

/// The message type of a client message, if `kind` is one and not also a worker message.
fn client_only(kind: &[u8]) -> Option<&'static str> {
    ClientToBroker::KINDS
        .iter()
        .copied()
        .find(|k| k.as_bytes() == kind && !WorkerToBroker::KINDS.contains(k))
}

/// The message type of a worker message, if `kind` is one and not also a client message.
fn worker_only(kind: &[u8]) -> Option<&'static str> {
    WorkerToBroker::KINDS
        .iter()
        .copied()
        .find(|k| k.as_bytes() == kind && !ClientToBroker::KINDS.contains(k))
}

impl Frontend {
    /// Reads a message from the client socket (routing id first). `None`: no frames at all.
    pub fn client(
        &self,
        frames: &[Vec<u8>],
        user: Option<String>,
    ) -> Option<(ClientOrigin, Decoded<ClientToBroker>)> {
        let routing = frames.first()?;
        let prefix = router_prefix_len(frames);
        let mut addr = ClientAddr {
            routing: routing.clone(),
            delimiter: prefix == 2,
            compact: false,
        };
        let bytes = frames.last().map_or(0, Vec::len);
        let decoded = match parse_envelope(&frames[prefix..]) {
            Err(e) => Decoded::Malformed {
                id: frames.last().and_then(|b| peek_request_id(b, &self.limits)),
                failure: Failure::Decode {
                    code: e.code(),
                    message: e.to_string(),
                    path: None,
                },
            },
            Ok(envelope) => {
                addr.compact = envelope.compact;
                match ClientToBroker::decode(envelope.kind, envelope.body, &self.limits) {
                    Ok(request) => Decoded::Message(request),
                    Err(e) => Decoded::Malformed {
                        id: peek_request_id(envelope.body, &self.limits),
                        failure: self.client_failure(envelope.kind, &e),
                    },
                }
            }
        };
        Some((ClientOrigin { addr, user, bytes }, decoded))
    }

    /// A client body that does not decode: topics and patterns that are not strings are bad
    /// topics, and a worker message on this socket says where workers go.
    fn client_failure(&self, kind: &[u8], e: &DecodeError) -> Failure {
        let mut failure = decode_failure(e);
        if let (DecodeError::UnknownKind { .. }, Some(worker_kind)) = (e, worker_only(kind)) {
            if let Failure::Decode { message, .. } = &mut failure {
                *message = format!(
                    "`{worker_kind}` is a worker message, but this is the broker's client endpoint{}",
                    match self.worker_endpoint.as_str() {
                        "" => String::new(),
                        e => format!("; workers connect to {e}"),
                    }
                );
            }
        }
        if let (DecodeError::Field { path, .. }, Failure::Decode { code, .. }) = (e, &mut failure) {
            let topic_code = match (kind, path.as_str()) {
                (b"publish", "topic") => Some(ErrorCode::InvalidTopic),
                (b"publish_batch", p) if p.starts_with("messages") && p.ends_with(".topic") => {
                    Some(ErrorCode::InvalidTopic)
                }
                (b"subscribe", p) if p.starts_with("patterns") => Some(ErrorCode::InvalidPattern),
                _ => None,
            };
            if let Some(topic_code) = topic_code {
                *code = topic_code;
            }
        }
        failure
    }

    /// Reads a message from the worker socket (routing id first). `None`: no frames at all.
    pub fn worker(
        &self,
        frames: &[Vec<u8>],
        user: Option<String>,
    ) -> Option<(WorkerOrigin, Decoded<WorkerToBroker>)> {
        let routing = frames.first()?;
        let mut addr = WorkerAddr {
            routing: routing.clone(),
            compact: false,
        };
        let bytes = frames.last().map_or(0, Vec::len);
        // A result is sent on to the client inside two more maps (`result` -> `results` ->
        // value): one level less than clients accept keeps every reply readable.
        let limits = Limits {
            max_depth: self.limits.max_depth.saturating_sub(1),
            ..self.limits
        };
        let decoded = match parse_envelope(&frames[1..]) {
            Err(e) => Decoded::Malformed {
                id: None,
                failure: Failure::Decode {
                    code: e.code(),
                    message: e.to_string(),
                    path: None,
                },
            },
            Ok(envelope) => {
                addr.compact = envelope.compact;
                match WorkerToBroker::decode(envelope.kind, envelope.body, &limits) {
                    Ok(message) => Decoded::Message(message),
                    Err(e) => {
                        let mut failure = decode_failure(&e);
                        if let (Some(kind), Failure::Decode { message, .. }) =
                            (client_only(envelope.kind), &mut failure)
                        {
                            // Someone pointed a client at the worker port: say where they are.
                            *message = format!(
                                "`{kind}` is a client message, but this is the broker's worker endpoint{}",
                                match self.client_endpoint.as_str() {
                                    "" => String::new(),
                                    e => format!("; clients connect to {e}"),
                                }
                            );
                        }
                        Decoded::Malformed {
                            id: peek_request_id(envelope.body, &limits),
                            failure,
                        }
                    }
                }
            }
        };
        Some((WorkerOrigin { addr, user, bytes }, decoded))
    }
}

impl Frontend {
    /// Reads a message from the peer ROUTER: its sender (from the link's routing id) and the
    /// message. `None`: not from a peer link, or not a readable message (dropped: peers run
    /// the same protocol, and a peer that sends garbage gets no answer to mislead it).
    pub fn peer(
        &self,
        frames: &[Vec<u8>],
    ) -> Option<(mpreg_protocol::BrokerId, mpreg_protocol::PeerMessage)> {
        let (routing, rest) = frames.split_first()?;
        let (from, _link) = crate::peer_links::PeerLinks::sender(routing)?;
        let envelope = parse_envelope(rest).ok()?;
        let message =
            mpreg_protocol::PeerMessage::decode(envelope.kind, envelope.body, &self.limits).ok()?;
        Some((from, message))
    }

    /// Reads a message from the gossip SUB.
    pub fn gossip(&self, frames: &[Vec<u8>]) -> Option<mpreg_protocol::Gossip> {
        let envelope = parse_envelope(frames).ok()?;
        mpreg_protocol::Gossip::decode(envelope.kind, envelope.body, &self.limits).ok()
    }
}

/// Decodes a client socket message and hands it to the engine.
pub fn feed_client(
    frontend: &Frontend,
    engine: &mut Engine,
    out: &mut impl Outbox,
    frames: &[Vec<u8>],
    user: Option<String>,
    now: Instant,
) {
    match frontend.client(frames, user) {
        Some((origin, Decoded::Message(request))) => engine.on_client(out, origin, request, now),
        Some((origin, Decoded::Malformed { id, failure })) => {
            engine.on_client_malformed(out, &origin.addr, id, failure, now)
        }
        None => {}
    }
}

/// Decodes a worker socket message and hands it to the engine.
pub fn feed_worker(
    frontend: &Frontend,
    engine: &mut Engine,
    out: &mut impl Outbox,
    frames: &[Vec<u8>],
    user: Option<String>,
    now: Instant,
) {
    match frontend.worker(frames, user) {
        Some((origin, Decoded::Message(message))) => engine.on_worker(out, origin, message, now),
        Some((origin, Decoded::Malformed { id, failure })) => {
            engine.on_worker_malformed(out, &origin.addr, id, failure, now)
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mpreg_protocol::{Ping, VERSION};

    fn frontend() -> Frontend {
        Frontend {
            limits: Limits::default(),
            client_endpoint: "tcp://c:1".into(),
            worker_endpoint: "tcp://w:2".into(),
        }
    }

    #[test]
    fn both_frame_forms_and_req_framing_decode_to_the_same_request() {
        let ping = ClientToBroker::Ping(Ping { id: 4 });
        let [v, k, b] = ping.to_frames();
        let three = vec![b"r".to_vec(), v.clone(), k.clone(), b.clone()];
        let req = vec![b"r".to_vec(), Vec::new(), v, k, b];
        let compact = vec![b"r".to_vec(), ping.to_compact_frame()];
        for (frames, delimiter, is_compact) in [
            (three, false, false),
            (req, true, false),
            (compact, false, true),
        ] {
            let (origin, decoded) = frontend().client(&frames, None).unwrap();
            assert_eq!(
                (origin.addr.delimiter, origin.addr.compact),
                (delimiter, is_compact)
            );
            assert!(matches!(
                decoded,
                Decoded::Message(ClientToBroker::Ping(Ping { id: 4 }))
            ));
        }
        assert!(frontend().client(&[], None).is_none());
    }

    #[test]
    fn unreadable_messages_keep_their_id_and_code() {
        let frames = vec![
            b"r".to_vec(),
            VERSION.to_vec(),
            b"bogus".to_vec(),
            vec![0x81, 0xa2, b'i', b'd', 9],
        ];
        match frontend().client(&frames, None).unwrap().1 {
            Decoded::Malformed { id, failure } => {
                assert_eq!(
                    (id, failure.code()),
                    (Some(9), ErrorCode::UnknownMessageType)
                )
            }
            other => panic!("{other:?}"),
        }
        // A worker message on the client port, a client message on the worker port.
        let register =
            b"\x84\xa4node\xa1n\xa9functions\x90\xa9resources\x90\xa8capacity\x01".to_vec();
        let frames = vec![
            b"r".to_vec(),
            VERSION.to_vec(),
            b"register".to_vec(),
            register,
        ];
        match frontend().client(&frames, None).unwrap().1 {
            Decoded::Malformed {
                failure: Failure::Decode { message, .. },
                ..
            } => {
                assert!(
                    message.contains("workers connect to tcp://w:2"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
        let frames = vec![
            b"r".to_vec(),
            VERSION.to_vec(),
            b"ping".to_vec(),
            vec![0x81, 0xa2, b'i', b'd', 1],
        ];
        match frontend().worker(&frames, None).unwrap().1 {
            Decoded::Malformed {
                failure: Failure::Decode { message, .. },
                ..
            } => {
                assert!(
                    message.contains("clients connect to tcp://c:1"),
                    "{message}"
                )
            }
            other => panic!("{other:?}"),
        }
    }
}
