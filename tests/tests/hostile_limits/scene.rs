//! The stage of every attack: a broker, a node, a bystander client, the figures before and
//! after.

use super::*;

pub(crate) fn one_attack_at_a_time() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed while holding the lock poisons it; the others still run.
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ----- broker figures ------------------------------------------------------------------------

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Memory {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

pub(crate) fn memory(pid: u32) -> Memory {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    Memory {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
    }
}

pub(crate) fn reply(dealer: &RawDealer) -> BrokerToClient {
    mpreg_tests::raw_reply(dealer, WAIT)
}

pub(crate) fn error(dealer: &RawDealer) -> ErrorReply {
    mpreg_tests::raw_error(dealer, WAIT)
}

pub(crate) fn result(dealer: &RawDealer) -> PlanResult {
    match reply(dealer) {
        BrokerToClient::Result(r) => r,
        other => panic!("expected a result, got {other:?}"),
    }
}

pub(crate) fn status(ctx: &Context, endpoint: &str) -> StatusReply {
    let d = RawDealer::connect(ctx, endpoint).unwrap();
    d.send(&ClientToBroker::Status(StatusRequest { id: 1 }).to_frames())
        .unwrap();
    match reply(&d) {
        BrokerToClient::Status(s) => s,
        other => panic!("expected a status, got {other:?}"),
    }
}

/// A fresh connection's ping round trip.
pub(crate) fn ping_round_trip(ctx: &Context, endpoint: &str) -> Duration {
    let started = Instant::now();
    let d = RawDealer::connect(ctx, endpoint).unwrap();
    d.send(&ClientToBroker::Ping(Ping { id: 42 }).to_frames())
        .unwrap();
    assert!(matches!(
        reply(&d),
        BrokerToClient::Pong(Pong { id: 42, .. })
    ));
    started.elapsed()
}

pub(crate) fn tcp_addr(endpoint: &str) -> SocketAddr {
    endpoint
        .strip_prefix("tcp://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not a tcp endpoint: {endpoint}"))
}

// ----- the bystander -------------------------------------------------------------------------

#[derive(Debug, Default)]
pub(crate) struct BystanderReport {
    pub(crate) calls: u64,
    pub(crate) slowest: Duration,
    pub(crate) errors: Vec<String>,
}

/// An SDK client that calls `echo` in a loop on its own thread, from before the attack until
/// [`Bystander::finish`].
pub(crate) struct Bystander {
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) calls: Arc<AtomicU64>,
    pub(crate) thread: JoinHandle<BystanderReport>,
}

impl Bystander {
    /// Connects and returns once the first call has been answered.
    pub(crate) fn start(endpoint: &str) -> Bystander {
        let stop = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicU64::new(0));
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let endpoint = endpoint.to_string();
        let (loop_stop, loop_calls) = (Arc::clone(&stop), Arc::clone(&calls));
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let mut report = BystanderReport::default();
                let options = ClientOptions::default().with_request_timeout(WAIT);
                let client = match Client::connect_with(&endpoint, options).await {
                    Ok(client) => client,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return report;
                    }
                };
                let mut ready = Some(ready_tx);
                for i in 0u64.. {
                    if loop_stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let started = Instant::now();
                    match client.call("echo", args![i]).await {
                        Ok(v) if v == Value::from(i) => {
                            report.calls += 1;
                            loop_calls.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(other) => report.errors.push(format!("echo({i}) returned {other}")),
                        Err(e) => report.errors.push(format!("echo({i}): {e}")),
                    }
                    report.slowest = report.slowest.max(started.elapsed());
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                    }
                    tokio::time::sleep(BYSTANDER_PAUSE).await;
                }
                client.close().await;
                report
            })
        });
        match ready_rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the bystander could not connect: {e}"),
            Err(_) => panic!("the bystander's first call got no answer"),
        }
        Bystander {
            stop,
            calls,
            thread,
        }
    }

    /// Calls answered so far.
    pub(crate) fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Waits until `more` further calls were answered (proof of service after an attack).
    pub(crate) fn wait_for_calls(&self, more: u64) {
        let target = self.calls() + more;
        let deadline = Instant::now() + WAIT;
        while self.calls() < target {
            assert!(
                Instant::now() < deadline,
                "the bystander was not served: {} of {target} calls within {WAIT:?}",
                self.calls()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub(crate) fn finish(self) -> BystanderReport {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("the bystander thread")
    }
}

// ----- a broker under attack -----------------------------------------------------------------

/// What the attack's own legitimate traffic adds to the broker's counters (the bystander's
/// calls are added by [`Scene::finish`]).
#[derive(Debug, Default)]
pub(crate) struct Expected {
    /// `plans_received`: plans that were decoded (then run or refused by plan rules).
    pub(crate) plans: u64,
    /// `tasks_dispatched`: tasks that reached the node.
    pub(crate) tasks: u64,
    /// `malformed_messages`: bodies refused before decoding (104, 105, ...).
    pub(crate) malformed: u64,
}

pub(crate) struct Scene {
    pub(crate) label: &'static str,
    pub(crate) broker: BrokerProc,
    pub(crate) _node: Proc,
    pub(crate) ctx: Context,
    pub(crate) bystander: Bystander,
    pub(crate) counters_before: BTreeMap<String, u64>,
    pub(crate) memory_before: Memory,
}

impl Scene {
    /// A broker configured by `env`, a node serving the built-ins, the counters before anyone
    /// called, then a bystander that is connected and served before the attack starts.
    pub(crate) fn start(label: &'static str, env: &[(&str, &str)]) -> Scene {
        let broker = start_broker(&[], env);
        let node = start_node(&broker.worker, "n0", &[], &[]);
        let ctx = Context::new();
        let counters_before = status(&ctx, &broker.client).counters;
        let bystander = Bystander::start(&broker.client);
        let memory_before = memory(broker.proc.pid());
        Scene {
            label,
            broker,
            _node: node,
            ctx,
            bystander,
            counters_before,
            memory_before,
        }
    }

    pub(crate) fn status(&self) -> StatusReply {
        status(&self.ctx, &self.broker.client)
    }

    /// The aftermath: the bystander is still served and never waited long, the broker process
    /// is alive and answers a new client, exactly the expected work reached the node, and the
    /// broker's peak memory grew by less than [`MEMORY_BOUND_KIB`]. Returns the counter deltas.
    pub(crate) fn finish(mut self, expected: Expected) -> BTreeMap<String, u64> {
        self.bystander.wait_for_calls(3);
        let report = self.bystander.finish();
        assert!(report.errors.is_empty(), "bystander: {:?}", report.errors);
        assert!(
            report.slowest < SERVED_WITHIN,
            "{}: the bystander waited {:?} for one call",
            self.label,
            report.slowest
        );

        assert!(
            self.broker
                .proc
                .wait_exit(Duration::from_millis(50))
                .is_none(),
            "{}: the broker exited; log:\n{}",
            self.label,
            self.broker.proc.log()
        );
        let fresh = ping_round_trip(&self.ctx, &self.broker.client);

        let after = status(&self.ctx, &self.broker.client).counters;
        let deltas: BTreeMap<String, u64> = after
            .iter()
            .map(|(k, v)| {
                let before = self.counters_before.get(k).copied().unwrap_or(0);
                (k.clone(), v - before)
            })
            .collect();
        let delta = |k: &str| deltas.get(k).copied().unwrap_or(0);
        assert_eq!(
            delta("tasks_dispatched"),
            report.calls + expected.tasks,
            "{}: tasks that reached the node (bystander {} + attack {}); deltas {deltas:?}",
            self.label,
            report.calls,
            expected.tasks
        );
        assert_eq!(
            delta("plans_received"),
            report.calls + expected.plans,
            "{}: plans decoded; deltas {deltas:?}",
            self.label
        );
        assert_eq!(
            delta("malformed_messages"),
            expected.malformed,
            "{}: bodies refused before decoding; deltas {deltas:?}",
            self.label
        );

        let before = self.memory_before;
        let after = memory(self.broker.proc.pid());
        let peak_growth = after.hwm_kib.saturating_sub(before.rss_kib);
        println!(
            "{}: broker VmRSS {} -> {} KiB, VmHWM {} -> {} KiB (peak growth {} KiB); \
             bystander {} calls, slowest {:?}; fresh ping {:?}",
            self.label,
            before.rss_kib,
            after.rss_kib,
            before.hwm_kib,
            after.hwm_kib,
            peak_growth,
            report.calls,
            report.slowest,
            fresh
        );
        assert!(
            peak_growth < MEMORY_BOUND_KIB,
            "{}: the broker's peak RSS grew by {peak_growth} KiB",
            self.label
        );
        deltas
    }
}
