//! ZMTP 3.0 by hand (rfc.zeromq.org/spec/23), for the raw TCP attacks.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;

/// Frame flag bits (spec 23, "Framing").
pub const LONG: u8 = 0x02;
pub const COMMAND: u8 = 0x04;

/// The 64-byte greeting of a NULL-mechanism client: signature `ff 00*8 7f`, version 3.0,
/// mechanism "NULL" padded with zeros to 20 bytes, as-server 0, 31 bytes of zero filler.
pub fn greeting() -> [u8; 64] {
    let mut g = [0u8; 64];
    g[0] = 0xff;
    g[9] = 0x7f;
    g[10] = 3;
    g[11] = 0;
    g[12..16].copy_from_slice(b"NULL");
    g
}

/// A READY command carrying `Socket-Type` (a short command frame).
pub fn ready(socket_type: &str) -> Vec<u8> {
    let mut body = vec![5];
    body.extend_from_slice(b"READY");
    body.push(11);
    body.extend_from_slice(b"Socket-Type");
    body.extend_from_slice(&u32::try_from(socket_type.len()).unwrap().to_be_bytes());
    body.extend_from_slice(socket_type.as_bytes());
    let mut frame = vec![COMMAND, u8::try_from(body.len()).unwrap()];
    frame.extend(body);
    frame
}

/// A peer's greeting, decoded: (major, minor, mechanism, as-server).
pub struct Greeting {
    pub major: u8,
    pub minor: u8,
    pub mechanism: String,
    pub as_server: u8,
}

pub fn read_greeting(s: &mut TcpStream) -> Greeting {
    let mut g = [0u8; 64];
    s.read_exact(&mut g).expect("the broker's 64-byte greeting");
    assert_eq!(g[0], 0xff, "signature start: {g:02x?}");
    assert_eq!(g[9], 0x7f, "signature end: {g:02x?}");
    Greeting {
        major: g[10],
        minor: g[11],
        mechanism: String::from_utf8_lossy(&g[12..32])
            .trim_end_matches('\0')
            .to_string(),
        as_server: g[32],
    }
}

/// Reads one frame: (flags, body).
pub fn read_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut flags = [0u8; 1];
    s.read_exact(&mut flags).expect("frame flags");
    let size = if flags[0] & LONG != 0 {
        let mut n = [0u8; 8];
        s.read_exact(&mut n).expect("frame size");
        u64::from_be_bytes(n)
    } else {
        let mut n = [0u8; 1];
        s.read_exact(&mut n).expect("frame size");
        u64::from(n[0])
    };
    assert!(size < 1 << 20, "a small frame from the broker, not {size}");
    let mut body = vec![0u8; usize::try_from(size).unwrap()];
    s.read_exact(&mut body).expect("frame body");
    (flags[0], body)
}

/// Reads a command frame and returns its name and properties (READY's metadata).
pub fn read_command(s: &mut TcpStream) -> (String, BTreeMap<String, Vec<u8>>) {
    let (flags, body) = read_frame(s);
    assert_ne!(
        flags & COMMAND,
        0,
        "a command frame, got flags {flags:#04x}"
    );
    let name_len = usize::from(body[0]);
    let name = String::from_utf8_lossy(&body[1..1 + name_len]).to_string();
    let mut props = BTreeMap::new();
    let mut rest = &body[1 + name_len..];
    while !rest.is_empty() {
        let key_len = usize::from(rest[0]);
        let key = String::from_utf8_lossy(&rest[1..1 + key_len]).to_string();
        rest = &rest[1 + key_len..];
        let value_len = u32::from_be_bytes(rest[..4].try_into().unwrap()) as usize;
        props.insert(key, rest[4..4 + value_len].to_vec());
        rest = &rest[4 + value_len..];
    }
    (name, props)
}

/// Greeting and READY both ways, as a DEALER; checks what the broker's libzmq answers.
pub fn handshake(s: &mut TcpStream) {
    s.write_all(&greeting()).expect("send greeting");
    let peer = read_greeting(s);
    assert_eq!(peer.major, 3, "ZMTP 3.x");
    assert_eq!(peer.mechanism, "NULL");
    assert_eq!(peer.as_server, 0, "NULL has no server role");
    s.write_all(&ready("DEALER")).expect("send READY");
    let (name, props) = read_command(s);
    assert_eq!(name, "READY");
    assert_eq!(
        props.get("Socket-Type").map(Vec::as_slice),
        Some(&b"ROUTER"[..]),
        "{props:?}"
    );
    println!(
        "broker greeting: ZMTP {}.{} {} as-server {}; READY {:?}",
        peer.major,
        peer.minor,
        peer.mechanism,
        peer.as_server,
        props
            .iter()
            .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
            .collect::<Vec<_>>()
    );
}
