//! What the transport tests share: an echoing ROUTER on a reactor thread.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Instant;

use mpreg_transport::*;

/// A ROUTER that echoes every message back to its sender, until its handles are dropped.
pub struct Echo {
    pub socket: Option<SocketId>,
}

impl Handler for Echo {
    type Command = ();
    fn on_message(&mut self, io: &mut Io, socket: SocketId, frames: Vec<Vec<u8>>) {
        // A sender that is gone is no failure of the echo (the tests that need the reply
        // wait for it).
        let _ = io.send(socket, &frames);
    }
    fn on_command(&mut self, _io: &mut Io, _c: ()) {}
    fn on_timer(&mut self, _io: &mut Io) {}
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
    fn on_handles_dropped(&mut self, io: &mut Io) {
        if let Some(s) = self.socket.take() {
            io.close(s);
        }
    }
    fn is_finished(&self) -> bool {
        self.socket.is_none()
    }
}

/// An [`Echo`] bound to `endpoint` (a `*` port: the OS chooses) in `ctx`: its handle, its
/// thread and the endpoint it is bound to.
pub fn start_echo(
    ctx: &Context,
    endpoint: &str,
) -> (ReactorHandle<()>, ReactorThread<Echo>, String) {
    let (tx, rx) = std::sync::mpsc::channel();
    let endpoint = endpoint.to_string();
    let (handle, thread) = spawn("echo", ctx, 16, move |io| {
        let s = io.open(
            &SocketSpec::new(SocketKind::Router, SocketOptions::router_server()).bind(endpoint),
        )?;
        tx.send(io.bound_endpoints(s)[0].clone()).unwrap();
        Ok(Echo { socket: Some(s) })
    })
    .unwrap();
    (handle, thread, rx.recv().unwrap())
}
