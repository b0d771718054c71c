//! Helpers shared by the cluster tests (`cluster.rs`, `cluster_faults.rs`,
//! `cluster_scale.rs`): SDK clients with a time bound on every request, the cluster as one
//! broker sees it, status counters, and in-process nodes whose functions count what they run.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mpreg::{Client, Value};
use mpreg_protocol::peer::MemberState;
use mpreg_protocol::ClusterReply;
use mpreg_tests::BrokerProc;

/// Longest wait for one request in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test after [`WAIT`].
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
}

/// An SDK client of a broker.
pub async fn connect(b: &BrokerProc) -> Client {
    within("connect", Client::connect(&b.client))
        .await
        .expect("connect")
}

/// The cluster as `client`'s broker sees it.
pub async fn cluster(client: &Client) -> ClusterReply {
    within("cluster", client.cluster()).await.expect("cluster")
}

/// Names of the members `client`'s broker sees alive (itself included), sorted.
pub async fn alive(client: &Client) -> Vec<String> {
    let mut names: Vec<String> = cluster(client)
        .await
        .members
        .into_iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| m.name)
        .collect();
    names.sort();
    names
}

/// A status counter of `client`'s broker (0 when absent: counters at 0 are not reported).
pub async fn counter(client: &Client, name: &str) -> u64 {
    let status = within("status", client.status()).await.expect("status");
    status.counters.get(name).copied().unwrap_or(0)
}

/// The whole `status` reply.
pub async fn status(client: &Client) -> mpreg::StatusReply {
    within("status", client.status()).await.expect("status")
}

/// Polls `check` every 20 ms until it returns true; the time it took, or a panic naming `what`
/// after `limit`.
pub async fn until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Each broker's view, reduced to what must agree across the cluster once it has converged:
/// the alive members by (name, incarnation), and the functions each one serves.
pub type View = BTreeMap<(String, String), Vec<String>>;

/// `client`'s broker's [`View`].
pub async fn view(client: &Client) -> View {
    cluster(client)
        .await
        .members
        .into_iter()
        .filter(|m| m.state == MemberState::Alive)
        .map(|m| ((m.name, m.incarnation), m.functions))
        .collect()
}

/// What functions of in-process nodes record: executions per key (the first argument), and
/// the most tasks running at once.
#[derive(Default)]
pub struct Tally {
    /// Executions per first argument.
    pub runs: Mutex<BTreeMap<String, u32>>,
    /// Tasks running now.
    pub running: AtomicI64,
    /// The most tasks seen running at once.
    pub peak: AtomicI64,
    /// Executions in total.
    pub total: AtomicU64,
}

impl Tally {
    /// A new shared tally.
    pub fn new() -> Arc<Tally> {
        Arc::new(Tally::default())
    }

    /// Records the start of an execution for `key`; the guard records its end.
    pub fn enter(self: &Arc<Tally>, key: String) -> Running {
        *self.runs.lock().unwrap().entry(key).or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        Running(self.clone())
    }

    /// Keys executed more than once, with their counts.
    pub fn duplicates(&self) -> BTreeMap<String, u32> {
        self.runs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, &n)| n > 1)
            .map(|(k, &n)| (k.clone(), n))
            .collect()
    }
}

/// An execution in progress (see [`Tally::enter`]).
pub struct Running(Arc<Tally>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A blocking node function that records its runs in `tally`, sleeps `pause` and returns its
/// first argument.
pub fn counted(
    tally: &Arc<Tally>,
    pause: Duration,
) -> impl Fn(Vec<Value>, BTreeMap<String, Value>) -> Result<Value, String> + Send + Sync + 'static {
    let tally = tally.clone();
    move |args, _kwargs| {
        let first = args.first().cloned().unwrap_or(Value::Nil);
        let key = match &first {
            Value::String(s) => s.as_str().unwrap_or_default().to_string(),
            other => other.to_string(),
        };
        let _running = tally.enter(key);
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
        Ok(first)
    }
}
