//! CPU time per request in row 3 (1,000 in flight), by process: where each system spends the
//! two cores. Read from `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU, every thread),
//! before and after the pipelined run.

/// Nanoseconds on CPU of every live thread of `pid` (0 when it cannot be read).
pub(super) fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// CPU per request of the bench process and of the servers, over a run.
#[derive(Default, Clone, Copy)]
pub(super) struct CpuPerRequest {
    /// This process: the requesters (and NATS's responder task).
    pub(super) bench_us: f64,
    /// The server processes: nats-server, or MPREG's broker and node.
    pub(super) servers_us: f64,
}

/// A reading of the bench process and `servers` at the start of a run.
pub(super) struct CpuMark {
    bench: u64,
    servers: Vec<(u32, u64)>,
}

impl CpuMark {
    pub(super) fn now(servers: &[u32]) -> CpuMark {
        CpuMark {
            bench: cpu_ns(std::process::id()),
            servers: servers.iter().map(|&p| (p, cpu_ns(p))).collect(),
        }
    }

    /// CPU per request since the mark, over `requests`.
    pub(super) fn per_request(&self, requests: usize) -> CpuPerRequest {
        let n = requests.max(1) as f64 * 1e3;
        let bench = cpu_ns(std::process::id()).saturating_sub(self.bench);
        let servers: u64 = self
            .servers
            .iter()
            .map(|&(p, before)| cpu_ns(p).saturating_sub(before))
            .sum();
        CpuPerRequest {
            bench_us: bench as f64 / n,
            servers_us: servers as f64 / n,
        }
    }
}
