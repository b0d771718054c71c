//! Plain HTTP/1.1 over a TCP socket, for the tests of the brokers' and nodes' HTTP endpoints
//! (no HTTP client library: what goes over the wire is what the test wrote), and the parts of
//! the Prometheus text format the tests read.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// An answer: status, headers (names lowercased), body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Sends `request` (raw bytes) to `addr` and reads the answer until the server closes.
pub fn send(addr: &str, request: &[u8], timeout: Duration) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(timeout)).expect("timeout");
    stream.write_all(request).expect("send the request");
    read_answer(&mut stream)
}

/// Reads an answer until the server closes the connection.
pub fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete HTTP answer: {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `GET path`.
pub fn get(addr: &str, path: &str) -> Answer {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    send(addr, request.as_bytes(), Duration::from_secs(10))
}

/// One sample of an exposition: `name{labels}` -> value.
pub type Samples = BTreeMap<String, f64>;

/// Parses a Prometheus text exposition, checking its shape on the way: every sample line is
/// `name[{labels}] value`, every family has `# HELP` and `# TYPE` before its samples, and no
/// family appears twice.
pub fn parse_exposition(text: &str) -> Samples {
    let mut samples = Samples::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default().to_string();
            assert!(!helped.contains(&name), "family {name} described twice");
            helped.push(name);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap_or_default().to_string();
            let kind = parts.next().unwrap_or_default().to_string();
            assert!(
                ["counter", "gauge", "histogram", "untyped"].contains(&kind.as_str()),
                "{line}"
            );
            assert_eq!(helped.last(), Some(&name), "TYPE without HELP: {line}");
            typed.insert(name, kind);
            continue;
        }
        assert!(!line.is_empty(), "empty line in the exposition");
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("not a sample: {line:?}"));
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(name);
        assert!(
            typed.contains_key(family),
            "sample of an undeclared family: {line}"
        );
        if series.contains('{') {
            assert!(series.ends_with('}'), "{line}");
        }
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

/// The value of the one sample whose series starts with `prefix` (`name{` or the whole
/// series); panics when there is none or several.
pub fn value(samples: &Samples, series: &str) -> f64 {
    if let Some(v) = samples.get(series) {
        return *v;
    }
    let found: Vec<(&String, &f64)> = samples
        .iter()
        .filter(|(k, _)| k.starts_with(series))
        .collect();
    assert_eq!(found.len(), 1, "{series}: {found:?}");
    *found[0].1
}
