//! The broker's I/O shell: a reactor thread owning the client and worker ROUTERs, feeding the
//! [`Engine`] and carrying its replies out.

use std::time::{Duration, Instant};

use mpreg_protocol::VERSION;
use mpreg_transport::{
    spawn, Context, Handler, Io, ReactorHandle, ReactorThread, SendError, SocketId, SocketKind,
    SocketOptions, SocketSpec, TransportError,
};
use slog::{info, warn, Logger};

use crate::config::BrokerConfig;
use crate::engine::{ClientAddr, Delivery, Engine, Outbox};
use crate::exchange::EventSink;

/// Commands to a running broker.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting plans; fail those still running after `grace`; then stop.
    Shutdown {
        /// How long plans in flight may take.
        grace: Duration,
    },
}

struct Sockets<'a> {
    io: &'a mut Io,
    client: SocketId,
    worker: SocketId,
    events: SocketId,
}

impl EventSink for Sockets<'_> {
    fn to_events(&mut self, token: &[u8], kind: &str, body: &[u8]) -> Delivery {
        delivery(
            self.io
                .send(self.events, &[token, VERSION, kind.as_bytes(), body]),
        )
    }
}

fn delivery(result: Result<(), SendError>) -> Delivery {
    match result {
        Ok(()) => Delivery::Sent,
        Err(SendError::WouldBlock) => Delivery::Full,
        Err(_) => Delivery::Gone,
    }
}

impl Outbox for Sockets<'_> {
    fn to_client(&mut self, client: &ClientAddr, kind: &str, body: &[u8]) -> Delivery {
        let result = if client.delimiter {
            self.io.send(
                self.client,
                &[&client.routing[..], b"", VERSION, kind.as_bytes(), body],
            )
        } else {
            self.io.send(
                self.client,
                &[&client.routing[..], VERSION, kind.as_bytes(), body],
            )
        };
        delivery(result)
    }

    fn to_worker(&mut self, routing: &[u8], kind: &str, body: &[u8]) -> Delivery {
        delivery(
            self.io
                .send(self.worker, &[routing, VERSION, kind.as_bytes(), body]),
        )
    }
}

struct BrokerHandler {
    engine: Engine,
    client: SocketId,
    worker: SocketId,
    events: SocketId,
    finished: bool,
    log: Logger,
}

impl BrokerHandler {
    fn sockets<'a>(&self, io: &'a mut Io) -> Sockets<'a> {
        Sockets {
            io,
            client: self.client,
            worker: self.worker,
            events: self.events,
        }
    }

    fn check_drained(&mut self, io: &mut Io) {
        if !self.finished && self.engine.is_drained() {
            let mut out = self.sockets(io);
            self.engine.disconnect_workers(&mut out);
            info!(self.log, "shut down"; "plans_completed" => self.engine.counter("plans_completed"));
            self.finished = true;
        }
    }
}

impl Handler for BrokerHandler {
    type Command = Command;

    fn on_message(&mut self, io: &mut Io, socket: SocketId, frames: Vec<Vec<u8>>) {
        let now = io.now();
        let mut out = self.sockets(io);
        if socket == self.client {
            self.engine.on_client_message(&mut out, &frames, now);
        } else if socket == self.worker {
            self.engine.on_worker_message(&mut out, &frames, now);
        } else {
            self.engine.on_event_message(&mut out, &frames, now);
        }
        if self.engine.is_drained() {
            self.check_drained(io);
        }
    }

    fn on_command(&mut self, io: &mut Io, command: Command) {
        match command {
            Command::Shutdown { grace } => {
                info!(self.log, "shutting down"; "plans_in_flight" => self.engine.plans_in_flight(), "grace_ms" => grace.as_millis() as u64);
                self.engine.begin_shutdown(io.now() + grace);
                self.check_drained(io);
            }
        }
    }

    fn on_timer(&mut self, io: &mut Io) {
        let now = io.now();
        let workers = self.engine.worker_count();
        let mut out = self.sockets(io);
        self.engine.on_tick(&mut out, now);
        let after = self.engine.worker_count();
        if after < workers {
            warn!(self.log, "expired silent workers"; "expired" => workers - after, "remaining" => after);
        }
        self.check_drained(io);
    }

    fn next_deadline(&self) -> Option<Instant> {
        Some(self.engine.next_deadline())
    }

    fn on_handles_dropped(&mut self, io: &mut Io) {
        // The owner is gone without asking for a graceful shutdown: stop now.
        if !self.finished && !self.engine.is_shutting_down() {
            self.engine.begin_shutdown(io.now());
            let now = io.now();
            let mut out = self.sockets(io);
            self.engine.on_tick(&mut out, now);
            self.check_drained(io);
        }
    }

    fn is_finished(&self) -> bool {
        self.finished
    }
}

/// A broker running on its own reactor thread.
pub struct Broker {
    /// The client endpoint actually bound (OS-chosen port resolved).
    pub client_endpoint: String,
    /// The worker endpoint actually bound.
    pub worker_endpoint: String,
    /// The event endpoint actually bound.
    pub event_endpoint: String,
    handle: ReactorHandle<Command>,
    thread: ReactorThread<BrokerHandler>,
}

impl Broker {
    /// Binds the sockets and starts serving.
    pub fn start(
        config: &BrokerConfig,
        ctx: &Context,
        log: Logger,
    ) -> Result<Broker, TransportError> {
        let limits = config.limits();
        let options = SocketOptions {
            sndhwm: config.socket.hwm,
            rcvhwm: config.socket.hwm,
            handshake_ms: config.socket.handshake_timeout_ms,
            ..SocketOptions::router_server()
        }
        // libzmq drops a connection sending a frame over this; a body just over the
        // application limit still arrives and gets a typed `message_too_large` reply.
        .with_max_frame_bytes(limits.max_message_bytes.saturating_add(1 << 20));
        let client_spec = SocketSpec::new(SocketKind::Router, options.clone())
            .bind(config.client_endpoint.clone());
        let worker_spec =
            SocketSpec::new(SocketKind::Router, options).bind(config.worker_endpoint.clone());
        let event_options = SocketOptions {
            sndhwm: config.socket.event_hwm,
            rcvhwm: config.socket.event_hwm,
            handshake_ms: config.socket.handshake_timeout_ms,
            ..SocketOptions::xpub_events()
        };
        let event_spec =
            SocketSpec::new(SocketKind::XPub, event_options).bind(config.event_endpoint.clone());
        let mut engine_config = config.engine();
        let (endpoints_tx, endpoints_rx) = std::sync::mpsc::channel();
        let engine_log = log.clone();
        let (handle, thread) = spawn("mpreg-broker", ctx, 1024, move |io| {
            let client = io.open(&client_spec)?;
            let worker = io.open(&worker_spec)?;
            let events = io.open(&event_spec)?;
            let endpoints = (
                io.bound_endpoints(client)[0].clone(),
                io.bound_endpoints(worker)[0].clone(),
                io.bound_endpoints(events)[0].clone(),
            );
            if engine_config.exchange.events_endpoint.is_empty() {
                engine_config.exchange.events_endpoint = endpoints.2.clone();
            }
            let _ = endpoints_tx.send(endpoints);
            Ok(BrokerHandler {
                engine: Engine::new(engine_config, Instant::now()).with_logger(engine_log.clone()),
                client,
                worker,
                events,
                finished: false,
                log: engine_log,
            })
        })?;
        let (client_endpoint, worker_endpoint, event_endpoint) = endpoints_rx
            .recv()
            .map_err(|_| TransportError::Reactor("broker reactor ended during start".into()))?;
        Ok(Broker {
            client_endpoint,
            worker_endpoint,
            event_endpoint,
            handle,
            thread,
        })
    }

    /// Asks the broker to shut down gracefully (see [`Command::Shutdown`]).
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.handle.try_send(Command::Shutdown { grace });
    }

    /// Waits for the broker thread to end.
    pub fn join(self) -> Result<(), TransportError> {
        drop(self.handle);
        self.thread.join().map(|_| ())
    }
}
