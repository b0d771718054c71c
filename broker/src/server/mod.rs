//! The broker's I/O shell: a reactor thread owning the client and worker ROUTERs, feeding the
//! [`Engine`] and carrying its replies out.

use std::time::{Duration, Instant};

use mpreg_protocol::peer::PeerEndpoints;
use mpreg_protocol::BrokerId;
use mpreg_transport::{
    spawn, Context, Curve, Handler, Io, Key, KeyPair, MonitorEvent, ReactorHandle, ReactorThread,
    SocketEvent, SocketId, SocketKind, SocketOptions, SocketSpec, TransportError,
};
use slog::{info, warn, Logger};

use crate::access::{AccessList, Role, CLIENT_DOMAIN, EVENT_DOMAIN, WORKER_DOMAIN};
use crate::config::BrokerConfig;
use crate::engine::{ClusterConfig, Engine};
use crate::frontend::{feed_client, feed_worker, Frontend};
use crate::ids::IdSource;
use crate::peer_links::PeerLinks;

mod sockets;

use sockets::Sockets;

/// Commands to a running broker.
#[derive(Debug)]
pub enum Command {
    /// Stop accepting plans; fail those still running after `grace`; then stop.
    Shutdown {
        /// How long plans in flight may take.
        grace: Duration,
    },
    /// Replace the access rules (SIGHUP): new connections are checked against them, requests
    /// too, and workers whose key was removed are dropped.
    Reload(Box<AccessList>),
    /// Send a copy of the broker's figures (for the HTTP thread: `/metrics`, the dashboard).
    Snapshot(crate::http::SnapshotReply),
}

/// Why a broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A socket could not be set up.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The key file or the access file is unusable.
    #[error("security: {0}")]
    Security(String),
    /// The configured HTTP endpoint could not be bound.
    #[error("http_endpoint: {0}")]
    Http(String),
}

/// Where libzmq sends ZAP requests (RFC 27); bound in each context before any CURVE socket.
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// The worker socket's libzmq context on a CURVE broker (see [`SocketSpec::in_context`]).
const WORKER_CONTEXT: u8 = 1;

struct BrokerHandler {
    engine: Engine,
    frontend: Frontend,
    client: SocketId,
    worker: SocketId,
    events: SocketId,
    /// The ZAP handler's sockets, one per libzmq context (CURVE brokers only).
    zap: Vec<SocketId>,
    /// The keys allowed in, as the ZAP handler sees them (the engine has its own copy).
    access: Option<AccessList>,
    finished: bool,
    /// LINGER when the sockets close (`socket.close_linger_ms`).
    close_linger: Duration,
    /// The cluster's sockets.
    peers: Option<PeerLinks>,
    log: Logger,
}

impl BrokerHandler {
    /// Answers one ZAP request: `[version, request id, domain, address, identity, mechanism,
    /// credentials...]` -> `[version, request id, status, text, user id, metadata]`.
    fn on_zap(&mut self, io: &mut Io, zap: SocketId, frames: &[Vec<u8>]) {
        let field = |i: usize| frames.get(i).map(Vec::as_slice).unwrap_or_default();
        let version = field(0);
        let request_id = field(1);
        let verdict = (|| {
            if version != b"1.0" {
                return Err("unsupported ZAP version");
            }
            if field(5) != b"CURVE" {
                return Err("CURVE required");
            }
            let role = Role::of_domain(field(2)).ok_or("unknown domain")?;
            let key = Key::from_bytes(field(6)).ok_or("malformed CURVE credentials")?;
            self.access
                .as_ref()
                .and_then(|a| a.admit(role, &key))
                .ok_or("key not allowed")
        })();
        let (status, text, user): (&[u8], &str, String) = match verdict {
            Ok(user) => (b"200", "OK", user),
            Err(why) => {
                warn!(self.log, "connection refused"; "reason" => why, "domain" => String::from_utf8_lossy(field(2)).into_owned(), "address" => String::from_utf8_lossy(field(3)).into_owned(), "key" => Key::from_bytes(field(6)).map(|k| k.to_z85()).unwrap_or_default());
                (b"400", why, String::new())
            }
        };
        let reply: [&[u8]; 6] = [
            b"1.0",
            request_id,
            status,
            text.as_bytes(),
            user.as_bytes(),
            b"",
        ];
        let _ = io.send(zap, &reply);
    }

    /// The outbox over the sockets, and the engine to feed (borrowed apart).
    fn split<'a>(&'a mut self, io: &'a mut Io) -> (&'a mut Engine, Sockets<'a>) {
        let (engine, _, out) = self.split_with_frontend(io);
        (engine, out)
    }

    fn split_with_frontend<'a>(
        &'a mut self,
        io: &'a mut Io,
    ) -> (&'a mut Engine, &'a Frontend, Sockets<'a>) {
        let out = Sockets {
            io,
            client: self.client,
            worker: self.worker,
            events: self.events,
            max_reply_bytes: self.frontend.limits.max_message_bytes,
            peers: self.peers.as_mut(),
        };
        (&mut self.engine, &self.frontend, out)
    }

    fn check_drained(&mut self, io: &mut Io) {
        if !self.finished && self.engine.is_drained() {
            let (engine, mut out) = self.split(io);
            engine.leave_cluster(&mut out);
            engine.disconnect_workers(&mut out);
            info!(self.log, "shut down"; "plans_completed" => self.engine.counter("plans_completed"));
            self.finished = true;
        }
    }
}

impl Handler for BrokerHandler {
    type Command = Command;

    fn on_message(&mut self, io: &mut Io, socket: SocketId, frames: Vec<Vec<u8>>) {
        if self.zap.contains(&socket) {
            return self.on_zap(io, socket, &frames);
        }
        let now = io.now();
        let user = io.take_peer_user();
        let peer_router = self.peers.as_ref().map(|p| (p.router, p.gossip_sub));
        let (client, worker) = (self.client, self.worker);
        let (engine, frontend, mut out) = self.split_with_frontend(io);
        if socket == client {
            feed_client(frontend, engine, &mut out, &frames, user, now);
        } else if socket == worker {
            feed_worker(frontend, engine, &mut out, &frames, user, now);
        } else if peer_router.is_some_and(|(router, _)| router == socket) {
            if let Some((from, message)) = frontend.peer(&frames) {
                engine.on_peer(&mut out, from, message, now);
            }
        } else if peer_router.is_some_and(|(_, sub)| sub == socket) {
            if let Some(message) = frontend.gossip(&frames) {
                engine.on_gossip(&mut out, message, now);
            }
        } else if let Some(frame) = frames.first() {
            engine.on_event_frame(&mut out, frame, user.as_deref(), now);
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
            Command::Reload(access) => {
                if self.access.is_none() {
                    warn!(self.log, "reload ignored: this broker runs without CURVE");
                    return;
                }
                let (clients, workers) = access.len();
                info!(self.log, "access rules reloaded"; "clients" => clients, "workers" => workers);
                self.access = Some((*access).clone());
                let now = io.now();
                let (engine, mut out) = self.split(io);
                engine.set_access(&mut out, *access, now);
            }
            Command::Snapshot(reply) => {
                // A full or closed channel: the asker gave up waiting; nothing to do.
                let _ = reply.try_send(Box::new(self.engine.metrics_snapshot(io.now())));
            }
        }
    }

    fn on_timer(&mut self, io: &mut Io) {
        let now = io.now();
        let workers = self.engine.worker_count();
        let (engine, mut out) = self.split(io);
        engine.on_tick(&mut out, now);
        let after = self.engine.worker_count();
        if after < workers {
            warn!(self.log, "expired silent workers"; "expired" => workers - after, "remaining" => after);
        }
        self.check_drained(io);
    }

    fn next_deadline(&self) -> Option<Instant> {
        Some(self.engine.next_deadline())
    }

    fn on_socket_event(&mut self, io: &mut Io, event: MonitorEvent) {
        // Only the peer control links are monitored.
        let Some(endpoint) = self
            .peers
            .as_ref()
            .and_then(|p| p.control_endpoint(event.socket))
        else {
            return;
        };
        let up = match event.event {
            SocketEvent::HandshakeSucceeded => true,
            SocketEvent::Disconnected => false,
            _ => return,
        };
        let now = io.now();
        let (engine, mut out) = self.split(io);
        engine.on_peer_link(&mut out, &endpoint, up, now);
    }

    fn on_handles_dropped(&mut self, io: &mut Io) {
        // The owner is gone without asking for a graceful shutdown: stop now.
        if !self.finished && !self.engine.is_shutting_down() {
            self.engine.begin_shutdown(io.now());
            let now = io.now();
            let (engine, mut out) = self.split(io);
            engine.on_tick(&mut out, now);
            self.check_drained(io);
        }
    }

    fn is_finished(&self) -> bool {
        self.finished
    }

    fn close_linger(&self) -> Duration {
        // The `disconnect` just sent to every worker and the last replies to clients: closing
        // with LINGER 0 discarded some of them (a worker then noticed only 3 s later).
        self.close_linger
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
    /// In a cluster: this broker's incarnation id and its peer and gossip endpoints, bound.
    pub cluster: Option<(BrokerId, String, String)>,
    /// The HTTP endpoint actually bound (`/metrics`, health, dashboard); `None` when off.
    pub http_endpoint: Option<std::net::SocketAddr>,
    handle: ReactorHandle<Command>,
    thread: ReactorThread<BrokerHandler>,
    /// Stopped when the broker is joined or dropped.
    http: Option<mpreg_process::http::HttpServer>,
    /// Set by [`Broker::shutdown`].
    shutdown_asked: std::sync::atomic::AtomicBool,
}

impl Broker {
    /// Binds the sockets and starts serving. With `security.key_file` set, every socket runs
    /// CURVE and a ZAP handler admits only the keys of `security.access_file`.
    pub fn start(config: &BrokerConfig, ctx: &Context, log: Logger) -> Result<Broker, StartError> {
        let (keys, access) = if config.curve() {
            let keys = KeyPair::load(&config.security.key_file)
                .map_err(|e| StartError::Security(e.to_string()))?;
            let access = AccessList::load(std::path::Path::new(&config.security.access_file))
                .map_err(StartError::Security)?;
            (Some(keys), Some(access))
        } else {
            (None, None)
        };
        if let Some(access) = &access {
            if config.clustered() && access.peer_count() == 0 {
                return Err(StartError::Security(format!(
                    "{}: a CURVE broker in a cluster needs the brokers' public key as a [[peer]] (docs/CLUSTER.md); none is listed",
                    config.security.access_file
                )));
            }
        }
        let peer_keys = keys.clone();
        let curve = keys.map(Curve::Server);
        let secured = |options: SocketOptions, domain: &str| SocketOptions {
            zap_domain: curve.as_ref().map(|_| domain.to_string()),
            ..options.with_curve(curve.clone())
        };
        let with_users = |spec: SocketSpec| {
            if curve.is_some() {
                spec.with_user_ids()
            } else {
                spec
            }
        };
        let limits = config.limits();
        let options = SocketOptions {
            sndhwm: config.socket.hwm,
            rcvhwm: config.socket.hwm,
            handshake_ms: config.socket.handshake_timeout_ms,
            backlog: config.socket.backlog,
            ..SocketOptions::router_server()
        }
        // libzmq drops a connection sending a frame over this; a body just over the
        // application limit still arrives and gets a typed `message_too_large` reply.
        .with_max_frame_bytes(limits.max_message_bytes.saturating_add(1 << 20));
        let client_spec = with_users(
            SocketSpec::new(SocketKind::Router, secured(options.clone(), CLIENT_DOMAIN))
                .bind(config.client_endpoint.clone()),
        );
        // With CURVE the worker socket has its own libzmq context, hence its own I/O thread, so
        // that encryption for clients and for workers runs in parallel. Without it, one I/O
        // thread serves both: fewer threads to wake per call (5 alternating A/B runs on 2
        // cores: sequential p50 2-6 % lower, pipelined calls 7-27 % faster).
        let worker_context = if curve.is_some() { WORKER_CONTEXT } else { 0 };
        let worker_spec = with_users(
            SocketSpec::new(SocketKind::Router, secured(options, WORKER_DOMAIN))
                .bind(config.worker_endpoint.clone())
                .in_context(worker_context),
        );
        let event_options = SocketOptions {
            sndhwm: config.socket.event_hwm,
            rcvhwm: config.socket.event_hwm,
            handshake_ms: config.socket.handshake_timeout_ms,
            backlog: config.socket.backlog,
            ..SocketOptions::xpub_events()
        };
        let event_spec = with_users(
            SocketSpec::new(SocketKind::XPub, secured(event_options, EVENT_DOMAIN))
                .bind(config.event_endpoint.clone()),
        );
        let zap_specs: Vec<SocketSpec> = match curve {
            Some(_) => [0, WORKER_CONTEXT]
                .into_iter()
                .map(|n| {
                    SocketSpec::new(SocketKind::Rep, SocketOptions::default())
                        .bind(ZAP_ENDPOINT)
                        .in_context(n)
                })
                .collect(),
            None => Vec::new(),
        };
        let handler_access = access.clone();
        let close_linger = Duration::from_millis(config.socket.close_linger_ms);
        let mut engine_config = config.engine();
        let (endpoints_tx, endpoints_rx) = std::sync::mpsc::channel();
        // A new incarnation at every start: a restarted broker inherits nothing.
        let me = BrokerId(ulid::Ulid::new());
        let cluster = config.clustered().then(|| {
            (
                config.cluster.peer_endpoint.clone(),
                config.cluster.gossip_endpoint.clone(),
                config.cluster.name.clone(),
                config.cluster.peers.clone(),
                config.swim(),
                Duration::from_millis(config.cluster.digest_interval_ms),
                Duration::from_millis(config.cluster.ack_timeout_ms),
            )
        });
        let max_frame = limits.max_message_bytes.saturating_add(1 << 20);
        let server_log = log.new(slog::o!("component" => "server"));
        let engine_log = log.clone();
        let (handle, thread) = spawn("mpreg-broker", ctx, 1024, move |io| {
            // The ZAP handler first: a CURVE socket accepting before it exists would let
            // every key in.
            let zap = zap_specs
                .iter()
                .map(|spec| io.open(spec))
                .collect::<Result<Vec<_>, _>>()?;
            let client = io.open(&client_spec)?;
            let worker = io.open(&worker_spec)?;
            let events = io.open(&event_spec)?;
            let mut peers = None;
            let mut cluster_endpoints = None;
            if let Some((peer, gossip, name, seeds, swim, digest, ack)) = cluster {
                let links = PeerLinks::open(io, me, &peer, &gossip, max_frame, peer_keys.as_ref())?;
                let (peer, gossip) = links.bound(io);
                let endpoints = PeerEndpoints {
                    client: io.bound_endpoints(client)[0].clone(),
                    worker: io.bound_endpoints(worker)[0].clone(),
                    event: io.bound_endpoints(events)[0].clone(),
                    peer: peer.clone(),
                    gossip: gossip.clone(),
                };
                let mut cluster = ClusterConfig::new(name, me, endpoints, seeds);
                cluster.swim = swim;
                cluster.digest_interval = digest;
                cluster.ack_timeout = ack;
                engine_config.cluster = Some(cluster);
                peers = Some(links);
                cluster_endpoints = Some((me, peer, gossip));
            }
            let endpoints = (
                io.bound_endpoints(client)[0].clone(),
                io.bound_endpoints(worker)[0].clone(),
                io.bound_endpoints(events)[0].clone(),
                cluster_endpoints,
            );
            engine_config.client_endpoint = endpoints.0.clone();
            engine_config.worker_endpoint = endpoints.1.clone();
            if engine_config.exchange.events_endpoint.is_empty() {
                engine_config.exchange.events_endpoint = endpoints.2.clone();
            }
            let _ = endpoints_tx.send(endpoints);
            let frontend = Frontend {
                limits: engine_config.limits,
                client_endpoint: engine_config.client_endpoint.clone(),
                worker_endpoint: engine_config.worker_endpoint.clone(),
            };
            let now = io.now();
            let mut engine = Engine::new(engine_config, now, IdSource::from_entropy(now))
                .with_logger(engine_log.clone())
                .with_wall_clock(std::time::SystemTime::now());
            if let Some(access) = handler_access.clone() {
                let mut out = Sockets {
                    io,
                    client,
                    worker,
                    events,
                    max_reply_bytes: frontend.limits.max_message_bytes,
                    peers: None,
                };
                engine.set_access(&mut out, access, now);
            }
            Ok(BrokerHandler {
                engine,
                frontend,
                client,
                worker,
                events,
                zap,
                access: handler_access,
                finished: false,
                close_linger,
                peers,
                log: server_log,
            })
        })?;
        let (client_endpoint, worker_endpoint, event_endpoint, cluster) = endpoints_rx
            .recv()
            .map_err(|_| TransportError::Reactor("broker reactor ended during start".into()))?;
        let http = match start_http(config, &client_endpoint, &handle, &log) {
            Ok(http) => http,
            Err(e) => {
                let _ = handle.try_send(Command::Shutdown {
                    grace: Duration::ZERO,
                });
                drop(handle);
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(Broker {
            client_endpoint,
            worker_endpoint,
            event_endpoint,
            cluster,
            http_endpoint: http.as_ref().map(|h| h.local_addr()),
            handle,
            thread,
            http,
            shutdown_asked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Asks the broker to shut down gracefully (see [`Command::Shutdown`]).
    pub fn shutdown(&self, grace: Duration) {
        self.shutdown_asked
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.handle.try_send(Command::Shutdown { grace });
    }

    /// Replaces the access rules (see [`Command::Reload`]).
    pub fn reload(&self, access: AccessList) {
        let _ = self.handle.try_send(Command::Reload(Box::new(access)));
    }

    /// Waits for the broker thread to end, then stops the HTTP endpoint. After
    /// [`Broker::shutdown`] the broker ends once drained, and the HTTP endpoint answers
    /// meanwhile (not ready); without it, the broker stops at once.
    pub fn join(self) -> Result<(), TransportError> {
        let Broker {
            handle,
            thread,
            http,
            shutdown_asked,
            ..
        } = self;
        // Dropping the last handle stops the reactor at once: only when no shutdown was asked.
        let keep = shutdown_asked.into_inner().then_some(handle);
        let ended = thread.join().map(|_| ());
        drop(keep);
        drop(http);
        ended
    }
}

/// Starts the HTTP endpoint the configuration asks for (`http_endpoint`), asking the reactor
/// behind `handle` for its figures. A derived address (`auto`) that cannot be bound is logged
/// and skipped: the broker's own work does not depend on it; a configured one is an error.
fn start_http(
    config: &BrokerConfig,
    bound_client: &str,
    handle: &ReactorHandle<Command>,
    log: &Logger,
) -> Result<Option<mpreg_process::http::HttpServer>, StartError> {
    let Some((addr, explicit)) = config.http_addr(bound_client).map_err(StartError::Http)? else {
        return Ok(None);
    };
    // Weak: the HTTP threads must not keep the reactor alive once the broker is dropped.
    let weak = handle.downgrade();
    let ask: crate::http::Ask = Box::new(move |reply| {
        let handle = weak.upgrade().ok_or(crate::http::Unavailable::Stopped)?;
        handle
            .try_send(Command::Snapshot(reply))
            .map_err(|e| match e {
                mpreg_transport::TrySendError::Full(_) => crate::http::Unavailable::Busy,
                mpreg_transport::TrySendError::Closed(_) => crate::http::Unavailable::Stopped,
            })
    });
    let http_log = log.new(slog::o!("component" => "http"));
    match crate::http::start(addr, ask, http_log) {
        Ok(server) => {
            if !server.local_addr().ip().is_loopback() {
                warn!(log, "the HTTP endpoint is reachable from other hosts and has no authentication (read-only figures and the dashboard)"; "http" => %server.local_addr());
            }
            Ok(Some(server))
        }
        Err(e) if !explicit => {
            warn!(log, "no HTTP endpoint: the derived address cannot be bound (set http_endpoint)"; "address" => %addr, "error" => %e);
            Ok(None)
        }
        Err(e) => Err(StartError::Http(format!("cannot listen on {addr}: {e}"))),
    }
}
