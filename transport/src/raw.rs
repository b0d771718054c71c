//! A blocking DEALER for tools and tests that speak raw frames (conformance checks, hostile
//! input, benchmarks). Not for the hot path of the SDK, which uses the reactor.

use std::time::Duration;

use crate::error::TransportError;
use crate::reactor::Context;
use crate::socket_options::{Curve, SocketOptions};

/// A DEALER connected to one endpoint, used from a single thread.
pub struct RawDealer {
    socket: zmq::Socket,
}

impl RawDealer {
    /// Connects a DEALER with the default client options.
    pub fn connect(ctx: &Context, endpoint: &str) -> Result<RawDealer, TransportError> {
        RawDealer::connect_with(ctx, endpoint, &SocketOptions::dealer_client())
    }

    /// Connects a DEALER with the given options.
    pub fn connect_with(
        ctx: &Context,
        endpoint: &str,
        options: &SocketOptions,
    ) -> Result<RawDealer, TransportError> {
        crate::endpoint::validate(endpoint)?;
        let mut socket = ctx
            .raw()
            .socket(zmq::DEALER)
            .map_err(TransportError::Create)?;
        options.apply(&mut socket, zmq::DEALER)?;
        socket
            .connect(endpoint)
            .map_err(|source| TransportError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Ok(RawDealer { socket })
    }

    /// Sends a multipart message, waiting for room if needed.
    pub fn send<F: AsRef<[u8]>>(&self, frames: &[F]) -> Result<(), TransportError> {
        let last = frames.len().saturating_sub(1);
        for (i, frame) in frames.iter().enumerate() {
            let flags = if i < last { zmq::SNDMORE } else { 0 };
            self.socket
                .send(frame.as_ref(), flags)
                .map_err(TransportError::Socket)?;
        }
        Ok(())
    }

    /// Receives one multipart message, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        match self.socket.poll(zmq::POLLIN, ms) {
            Ok(n) if n > 0 => self.socket.recv_multipart(0).ok(),
            _ => None,
        }
    }
}

/// A blocking SUB for tools and tests.
pub struct RawSub {
    socket: zmq::Socket,
}

impl RawSub {
    /// Connects a SUB with the given receive high-water mark (0: unlimited).
    pub fn connect(ctx: &Context, endpoint: &str, rcvhwm: i32) -> Result<RawSub, TransportError> {
        RawSub::connect_with(ctx, endpoint, rcvhwm, None)
    }

    /// Connects a SUB, as a CURVE client when `curve` is given.
    pub fn connect_with(
        ctx: &Context,
        endpoint: &str,
        rcvhwm: i32,
        curve: Option<Curve>,
    ) -> Result<RawSub, TransportError> {
        crate::endpoint::validate(endpoint)?;
        let mut socket = ctx.raw().socket(zmq::SUB).map_err(TransportError::Create)?;
        if curve.is_some() {
            let options = SocketOptions {
                curve,
                ..SocketOptions::default()
            };
            options.apply(&mut socket, zmq::SUB)?;
        }
        let opt = |option, r: zmq::Result<()>| {
            r.map_err(|source| TransportError::Option { option, source })
        };
        opt("LINGER", socket.set_linger(0))?;
        opt("RCVHWM", socket.set_rcvhwm(rcvhwm))?;
        // Small kernel buffers too, so a subscriber that stops reading is felt quickly.
        if rcvhwm > 0 && rcvhwm < 1000 {
            opt("RCVBUF", socket.set_rcvbuf(16 * 1024))?;
        }
        socket
            .connect(endpoint)
            .map_err(|source| TransportError::Connect {
                endpoint: endpoint.to_string(),
                source,
            })?;
        Ok(RawSub { socket })
    }

    /// Adds a prefix filter.
    pub fn subscribe(&self, prefix: &[u8]) -> Result<(), TransportError> {
        self.socket
            .set_subscribe(prefix)
            .map_err(|source| TransportError::Option {
                option: "SUBSCRIBE",
                source,
            })
    }

    /// Removes a prefix filter.
    pub fn unsubscribe(&self, prefix: &[u8]) -> Result<(), TransportError> {
        self.socket
            .set_unsubscribe(prefix)
            .map_err(|source| TransportError::Option {
                option: "UNSUBSCRIBE",
                source,
            })
    }

    /// Receives one multipart message, or `None` after `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<Vec<u8>>> {
        let ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX);
        match self.socket.poll(zmq::POLLIN, ms) {
            Ok(n) if n > 0 => self.socket.recv_multipart(0).ok(),
            _ => None,
        }
    }
}
