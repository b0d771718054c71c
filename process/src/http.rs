//! A small HTTP/1.1 server for `GET` and `HEAD`, on threads of its own: what every MPREG
//! process serves `/metrics`, `/healthz`, `/readyz` (and the broker its dashboard) with.
//!
//! It is deliberately small (no keep-alive, no request bodies, no TLS), because what it serves
//! is small and read by Prometheus, load balancers and a browser, and because a full HTTP
//! stack is heavy to build here. What it does guard against: a request head larger than
//! [`HttpLimits::max_head_bytes`] gets `431`, one that does not arrive within
//! [`HttpLimits::request_timeout`] gets `408` (so a slow client holds one connection thread
//! for that long at most), more than [`HttpLimits::max_connections`] connections at once get
//! `503` at once, anything but `GET`/`HEAD` gets `405`, anything unreadable `400`. Every
//! answer closes its connection. The process's own work never waits on it: the routes run
//! on the connection threads, and whatever they need from a reactor they must ask for with a
//! bounded wait.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bounds on what one client may cost the server.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest request head (request line and headers), in bytes: `431` beyond it.
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head: `408` after it.
    pub request_timeout: Duration,
    /// Connections served at once; more get `503` and are closed.
    pub max_connections: usize,
    /// Time a response may take to be written (a client that does not read loses it).
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_head_bytes: 8 * 1024,
            request_timeout: Duration::from_secs(5),
            max_connections: 16,
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// The methods served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `GET`.
    Get,
    /// `HEAD`: the `GET` answer without its body.
    Head,
}

/// A request that was read in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET` or `HEAD`.
    pub method: Method,
    /// The path, without the query (`/metrics`).
    pub path: String,
    /// The query after `?`, raw (empty when there is none).
    pub query: String,
}

/// A response to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The body (not sent for `HEAD`; its length still is).
    pub body: Vec<u8>,
    /// More headers.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// A response with `status`, `content_type` and `body`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type: content_type.to_string(),
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// A plain-text response (UTF-8), the body followed by a newline.
    pub fn text(status: u16, body: &str) -> Response {
        Response::new(status, "text/plain; charset=utf-8", format!("{body}\n"))
    }

    /// A JSON response.
    pub fn json(status: u16, body: &serde_json::Value) -> Response {
        Response::new(status, "application/json", body.to_string())
    }

    /// `404 Not Found` for `path`.
    pub fn not_found(path: &str) -> Response {
        Response::text(404, &format!("not found: {path}"))
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// What answers requests: called on a connection thread, once per request.
pub type Routes = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// A running server; stopped (and its accept thread joined) when dropped.
pub struct HttpServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Binds `addr` (port 0: the OS chooses) and serves `routes` on threads of its own.
    ///
    /// # Errors
    /// The bind failed (address in use, not an address of this host, no permission).
    pub fn start(
        addr: SocketAddr,
        limits: HttpLimits,
        routes: Routes,
        log: slog::Logger,
    ) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let accept = std::thread::Builder::new()
            .name("mpreg-http".into())
            .spawn(move || accept_loop(listener, limits, routes, stopping, log))?;
        Ok(HttpServer {
            addr,
            stop,
            accept: Some(accept),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept with a connection of our own.
        let wake = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv4Addr::LOCALHOST.into(), self.addr.port())
            }
            IpAddr::V6(ip) if ip.is_unspecified() => {
                SocketAddr::new(Ipv6Addr::LOCALHOST.into(), self.addr.port())
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    limits: HttpLimits,
    routes: Routes,
    stop: Arc<AtomicBool>,
    log: slog::Logger,
) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                slog::warn!(log, "http accept failed"; "error" => %e);
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if active.load(Ordering::SeqCst) >= limits.max_connections {
            let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
            let busy = Response::text(503, "too many connections; try again")
                .with_header("Retry-After", "1");
            let _ = write_response(&mut stream, &busy, false);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(Arc::clone(&active));
        let routes = Arc::clone(&routes);
        let spawned = std::thread::Builder::new()
            .name("mpreg-http-conn".into())
            .spawn(move || {
                let _slot = slot;
                serve(stream, limits, &routes);
            });
        if let Err(e) = spawned {
            slog::warn!(log, "http connection thread not started"; "error" => %e);
        }
    }
}

/// A connection slot, given back when the connection thread ends (even by a panic).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// The client closed before sending a whole head: nothing to answer.
    Closed,
    /// Over the size limit.
    TooLarge,
    /// Not within the time limit.
    Timeout,
}

fn serve(mut stream: TcpStream, limits: HttpLimits, routes: &Routes) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(limits.write_timeout));
    let head = read_head(&mut stream, &limits);
    let (response, method) = match head {
        Ok(head) => match parse_head(&head) {
            Ok(request) => {
                let method = request.method;
                let response =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| routes(&request)))
                        .unwrap_or_else(|_| Response::text(500, "internal error"));
                (response, method)
            }
            Err(problem) => (problem, Method::Get),
        },
        Err(HeadError::Closed) => return,
        Err(HeadError::TooLarge) => (
            Response::text(
                431,
                &format!("request head over {} bytes", limits.max_head_bytes),
            ),
            Method::Get,
        ),
        Err(HeadError::Timeout) => (
            Response::text(
                408,
                &format!(
                    "request head not received within {} ms",
                    limits.request_timeout.as_millis()
                ),
            ),
            Method::Get,
        ),
    };
    if write_response(&mut stream, &response, method == Method::Head).is_ok() {
        linger(&mut stream);
    }
}

/// After the answer: stop sending, then read what the client still sends for a moment, so
/// that closing does not reset the connection before the client read the answer.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_millis(200);
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 64 * 1024 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// Reads up to the blank line ending the head, within the limits.
fn read_head(stream: &mut TcpStream, limits: &HttpLimits) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + limits.request_timeout;
    let mut head: Vec<u8> = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::Timeout);
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => {
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&chunk[..n]);
                if let Some(end) = find_end(&head[from..]) {
                    let end = from + end;
                    if end > limits.max_head_bytes {
                        return Err(HeadError::TooLarge);
                    }
                    head.truncate(end);
                    return Ok(head);
                }
                if head.len() > limits.max_head_bytes {
                    return Err(HeadError::TooLarge);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HeadError::Timeout)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

/// The length of the head in `bytes` (up to the end of its blank line), if it is complete.
fn find_end(bytes: &[u8]) -> Option<usize> {
    let crlf = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = bytes.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses a request head, or says what to answer instead.
fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let bad = |why: &str| Response::text(400, &format!("bad request: {why}"));
    let text = std::str::from_utf8(head).map_err(|_| bad("the head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("the request line is not `METHOD TARGET HTTP/1.x`"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') {
        return Err(bad("invalid method"));
    }
    match version {
        "HTTP/1.1" | "HTTP/1.0" => {}
        v if v.starts_with("HTTP/") => {
            return Err(Response::text(505, "only HTTP/1.0 and HTTP/1.1 are served"))
        }
        _ => return Err(bad("invalid HTTP version")),
    }
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let Some((name, _)) = line.split_once(':') else {
            return Err(bad("a header line without `:`"));
        };
        if name.is_empty() || name.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(bad("invalid header name"));
        }
    }
    if !target.starts_with('/') || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("the target must be a path starting with `/`"));
    }
    let method = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        _ => {
            return Err(
                Response::text(405, &format!("method {method} not allowed; use GET"))
                    .with_header("Allow", "GET, HEAD"),
            )
        }
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    Ok(Request {
        method,
        path: path.to_string(),
        query: query.to_string(),
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

fn write_response(stream: &mut TcpStream, response: &Response, head_only: bool) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

/// Where an HTTP server listens, as configured: `off`, `auto` (a process-specific default)
/// or `host:port` with an IP address or `localhost` (port 0: the OS chooses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpSetting {
    /// No HTTP server.
    Off,
    /// The process's default.
    Auto,
    /// This address.
    At(SocketAddr),
}

impl HttpSetting {
    /// Parses a setting; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<HttpSetting, String> {
        match text.trim() {
            "off" => Ok(HttpSetting::Off),
            "auto" => Ok(HttpSetting::Auto),
            other => parse_addr(other).map(HttpSetting::At),
        }
    }
}

/// Parses `host:port` (`[v6]:port` for IPv6; `localhost` is 127.0.0.1).
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    let problem = || {
        format!("{text:?} is not `off`, `auto` or host:port with an IP address or localhost (e.g. 127.0.0.1:7405)")
    };
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = text.rsplit_once(':').ok_or_else(problem)?;
    let port: u16 = port.parse().map_err(|_| problem())?;
    match host {
        "localhost" => Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)),
        _ => Err(problem()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(text: &str) -> Result<Request, u16> {
        parse_head(text.as_bytes()).map_err(|r| r.status)
    }

    #[test]
    fn request_heads_are_parsed_or_refused_with_the_right_status() {
        let ok = parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(ok.method, Method::Get);
        assert_eq!((ok.path.as_str(), ok.query.as_str()), ("/metrics", "x=1"));
        assert_eq!(parse("HEAD / HTTP/1.0\n\n").unwrap().method, Method::Head);
        assert_eq!(parse("POST /metrics HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(parse("DELETE / HTTP/1.1\r\n\r\n"), Err(405));
        assert_eq!(parse("GET / HTTP/2.0\r\n\r\n"), Err(505));
        for bad in [
            "GET /\r\n\r\n",
            "GET  / HTTP/1.1\r\n\r\n",
            "G\0T / HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nno colon here\r\n\r\n",
            "GET / SPDY\r\n\r\n",
            "GET /a b HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse(bad), Err(400), "{bad:?}");
        }
        assert_eq!(
            parse_head(b"GET /\xff HTTP/1.1\r\n\r\n")
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn head_ends_are_found_with_either_line_ending() {
        assert_eq!(find_end(b"GET / HTTP/1.1\r\n\r\nbody"), Some(18));
        assert_eq!(find_end(b"GET / HTTP/1.1\n\nbody"), Some(16));
        assert_eq!(find_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
    }

    #[test]
    fn settings_parse() {
        assert_eq!(HttpSetting::parse("off"), Ok(HttpSetting::Off));
        assert_eq!(HttpSetting::parse("auto"), Ok(HttpSetting::Auto));
        assert_eq!(
            HttpSetting::parse("127.0.0.1:7405"),
            Ok(HttpSetting::At("127.0.0.1:7405".parse().unwrap()))
        );
        assert_eq!(
            HttpSetting::parse("localhost:0"),
            Ok(HttpSetting::At("127.0.0.1:0".parse().unwrap()))
        );
        assert!(HttpSetting::parse("[::1]:9").is_ok());
        for bad in [
            "",
            "7405",
            "example.com:80",
            "tcp://127.0.0.1:7405",
            "1.2.3.4:99999",
        ] {
            assert!(HttpSetting::parse(bad).is_err(), "{bad}");
        }
    }

    fn get(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn a_real_server_answers_limits_and_stops() {
        let routes: Routes = Arc::new(|r: &Request| match r.path.as_str() {
            "/hello" => Response::text(200, "hi"),
            "/panic" => panic!("route failure"),
            other => Response::not_found(other),
        });
        let limits = HttpLimits {
            max_head_bytes: 256,
            request_timeout: Duration::from_millis(300),
            ..HttpLimits::default()
        };
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let server =
            HttpServer::start("127.0.0.1:0".parse().unwrap(), limits, routes, log).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        let hi = get(addr, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(hi.starts_with("HTTP/1.1 200 OK\r\n"), "{hi}");
        assert!(
            hi.contains("Content-Length: 3\r\n") && hi.ends_with("\r\n\r\nhi\n"),
            "{hi}"
        );
        let head = get(addr, b"HEAD /hello HTTP/1.1\r\n\r\n");
        assert!(
            head.contains("Content-Length: 3\r\n") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        assert!(get(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, b"GET /panic HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 500"));
        let post = get(
            addr,
            b"POST /hello HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(
            post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"),
            "{post}"
        );
        let mut huge = b"GET /hello HTTP/1.1\r\nX-Big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 1000));
        huge.extend_from_slice(b"\r\n\r\n");
        assert!(get(addr, &huge).starts_with("HTTP/1.1 431"));
        // A client that never finishes its head gets 408 after the timeout, not a hang.
        let started = Instant::now();
        let slow = get(addr, b"GET /hello HTTP/1.1\r\nHost");
        assert!(slow.starts_with("HTTP/1.1 408"), "{slow}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        drop(server);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err());
    }
}
