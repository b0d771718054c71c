//! CPU time and context switches per request in row 3 (1,000 in flight), by process: where
//! each system spends the two cores. Read from `/proc/<pid>/task/*/schedstat` (nanoseconds on
//! CPU) and `/proc/<pid>/task/*/status` (voluntary and involuntary context switches) of every
//! thread, before and after the pipelined run.

/// CPU nanoseconds and context switches of every live thread of `pid` (0 when unreadable).
fn usage(pid: u32) -> (u64, u64) {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    let mut cpu = 0;
    let mut switches = 0;
    for task in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat")) {
            cpu += s
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(task.path().join("status")) {
            switches += s
                .lines()
                .filter(|l| l.contains("voluntary_ctxt_switches"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    (cpu, switches)
}

/// CPU and context switches per request of the bench process and of the servers, over a run.
#[derive(Default, Clone, Copy)]
pub(super) struct CpuPerRequest {
    /// This process: the requesters (and NATS's responder task), µs.
    pub(super) bench_us: f64,
    /// The server processes: nats-server, or MPREG's broker and node, µs.
    pub(super) servers_us: f64,
    /// Context switches of this process's threads.
    pub(super) bench_switches: f64,
    /// Context switches of the servers' threads.
    pub(super) servers_switches: f64,
}

/// A reading of the bench process and `servers` at the start of a run.
pub(super) struct CpuMark {
    bench: (u64, u64),
    servers: Vec<(u32, (u64, u64))>,
}

impl CpuMark {
    pub(super) fn now(servers: &[u32]) -> CpuMark {
        CpuMark {
            bench: usage(std::process::id()),
            servers: servers.iter().map(|&p| (p, usage(p))).collect(),
        }
    }

    /// CPU and switches per request since the mark, over `requests`.
    pub(super) fn per_request(&self, requests: usize) -> CpuPerRequest {
        let n = requests.max(1) as f64;
        let delta = |before: (u64, u64), after: (u64, u64)| {
            (
                after.0.saturating_sub(before.0),
                after.1.saturating_sub(before.1),
            )
        };
        let bench = delta(self.bench, usage(std::process::id()));
        let servers = self
            .servers
            .iter()
            .map(|&(p, before)| delta(before, usage(p)))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
        CpuPerRequest {
            bench_us: bench.0 as f64 / n / 1e3,
            servers_us: servers.0 as f64 / n / 1e3,
            bench_switches: bench.1 as f64 / n,
            servers_switches: servers.1 as f64 / n,
        }
    }
}
