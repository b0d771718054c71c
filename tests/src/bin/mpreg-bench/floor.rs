//! The libzmq floor: a raw relay (ROUTER to ROUTER) and an echo worker on their own threads,
//! with no MPREG code in the path, and a client of it. Stopped (threads joined) on drop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mpreg_transport::baseline::{run_echo_worker, run_relay, BaselineClient};

pub struct Floor {
    /// A DEALER connected to the relay's client side.
    pub client: BaselineClient,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Floor {
    /// Starts the relay and the echo worker on loopback, OS-chosen ports.
    pub fn start() -> Floor {
        let stop = Arc::new(AtomicBool::new(false));
        let (ep_tx, ep_rx) = std::sync::mpsc::channel();
        let relay_stop = Arc::clone(&stop);
        let relay = std::thread::spawn(move || {
            run_relay(
                "tcp://127.0.0.1:*",
                "tcp://127.0.0.1:*",
                &relay_stop,
                |c, w| {
                    let _ = ep_tx.send((c.to_string(), w.to_string()));
                },
            )
            .expect("relay");
        });
        let (relay_client, relay_worker) = ep_rx.recv().expect("relay endpoints");
        let worker_stop = Arc::clone(&stop);
        let echo = std::thread::spawn(move || {
            run_echo_worker(&relay_worker, &worker_stop).expect("echo worker")
        });
        let client = BaselineClient::connect(&relay_client).expect("floor client");
        Floor {
            client,
            stop,
            threads: vec![relay, echo],
        }
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
