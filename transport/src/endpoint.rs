//! Endpoint strings (`tcp://host:port`, `ipc://path`, `inproc://name`): validation and the
//! loopback test that protected mode relies on.

use std::net::IpAddr;

use crate::error::TransportError;

/// Checks that `endpoint` is a transport libzmq accepts, with a host and port for TCP (the port
/// may be `*` to let the OS choose when binding).
pub fn validate(endpoint: &str) -> Result<(), TransportError> {
    let fail = |reason: &str| TransportError::Endpoint {
        endpoint: endpoint.to_string(),
        reason: reason.to_string(),
    };
    let (scheme, rest) = endpoint
        .split_once("://")
        .ok_or_else(|| fail("missing scheme (tcp://, ipc:// or inproc://)"))?;
    match scheme {
        "tcp" => {
            let (host, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| fail("tcp endpoints need host:port"))?;
            if host.is_empty() {
                return Err(fail("empty host"));
            }
            if port != "*" && port.parse::<u16>().is_err() {
                return Err(fail("port must be 0-65535 or *"));
            }
            Ok(())
        }
        "ipc" | "inproc" if !rest.is_empty() => Ok(()),
        "ipc" | "inproc" => Err(fail("empty address")),
        _ => Err(fail("unsupported scheme")),
    }
}

/// True when binding `endpoint` exposes nothing beyond this machine: a TCP endpoint on a
/// loopback address or `localhost`, or an `ipc://`/`inproc://` endpoint.
pub fn is_local_only(endpoint: &str) -> bool {
    let Some((scheme, rest)) = endpoint.split_once("://") else {
        return false;
    };
    match scheme {
        "ipc" | "inproc" => true,
        "tcp" => {
            let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_endpoints() {
        for ok in [
            "tcp://127.0.0.1:7400",
            "tcp://*:7400",
            "tcp://127.0.0.1:*",
            "tcp://[::1]:5",
            "ipc:///tmp/x",
            "inproc://a",
        ] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in [
            "127.0.0.1:7400",
            "tcp://:1",
            "tcp://h:99999",
            "tcp://h",
            "udp://h:1",
            "ipc://",
        ] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_detection() {
        assert!(is_local_only("tcp://127.0.0.1:7400"));
        assert!(is_local_only("tcp://127.3.0.1:*"));
        assert!(is_local_only("tcp://localhost:1"));
        assert!(is_local_only("tcp://[::1]:1"));
        assert!(is_local_only("ipc:///tmp/x"));
        assert!(!is_local_only("tcp://*:7400"));
        assert!(!is_local_only("tcp://0.0.0.0:7400"));
        assert!(!is_local_only("tcp://10.0.0.1:7400"));
        assert!(!is_local_only("tcp://eth0:7400"));
    }
}
