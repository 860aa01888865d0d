//! Producers of the [`crate::Msg`] bus: the live ring buffer (and later,
//! recordings).

pub mod live;
pub mod replay;

/// diag's own health: what the kernel side counted (cumulative since
/// start, summed over CPUs) and what user space saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
// Recordings from older builds lack newer counters: they read as zero.
#[serde(default)]
pub struct Health {
    /// When these were read (boot-time ns).
    #[serde(default)]
    pub ts_ns: u64,
    /// Events the kernel submitted to the ring buffer.
    pub submitted: u64,
    /// Events lost because the ring buffer was full.
    pub ringbuf_full: u64,
    /// Sockets whose owner could not be remembered (owner map full).
    pub sock_map_full: u64,
    /// Listening sockets that could not be remembered (map full).
    pub listen_map_full: u64,
    /// Tracepoint fields the kernel program failed to read.
    pub read_errors: u64,
    /// OOM kills reported without the victim's tgid and memory cgroup
    /// (the tp_btf program's note was missing).
    pub oom_no_victim_task: u64,
    /// Kernel struct reads that failed on the OOM path.
    pub oom_read_errors: u64,
    /// Scheduler: threads not tracked (task map full).
    pub sched_task_map_full: u64,
    /// Scheduler: processes not tracked (process map full).
    pub sched_proc_map_full: u64,
    /// Scheduler: task_struct fields the kernel program failed to read.
    pub sched_read_errors: u64,
    /// Records received by user space.
    pub received: u64,
    /// Records user space could not decode.
    pub decode_errors: u64,
}

impl Health {
    /// Everything that makes the output incomplete, in one sentence, or
    /// None when nothing was lost.
    pub fn losses(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.ringbuf_full > 0 {
            parts.push(format!(
                "{} events dropped (ring buffer full: raise --ring-mib)",
                self.ringbuf_full
            ));
        }
        if self.sock_map_full > 0 {
            parts.push(format!(
                "{} socket owners not tracked (map full)",
                self.sock_map_full
            ));
        }
        if self.listen_map_full > 0 {
            parts.push(format!(
                "{} listeners not tracked (map full)",
                self.listen_map_full
            ));
        }
        if self.read_errors > 0 {
            parts.push(format!("{} tracepoint read errors", self.read_errors));
        }
        if self.oom_no_victim_task > 0 {
            parts.push(format!(
                "{} OOM kills without the victim's memory cgroup from the kernel",
                self.oom_no_victim_task
            ));
        }
        if self.oom_read_errors > 0 {
            parts.push(format!(
                "{} OOM memory cgroup read errors",
                self.oom_read_errors
            ));
        }
        if self.sched_task_map_full > 0 {
            parts.push(format!(
                "{} thread switches not tracked (scheduler task map full)",
                self.sched_task_map_full
            ));
        }
        if self.sched_proc_map_full > 0 {
            parts.push(format!(
                "{} scheduler updates lost (process map full)",
                self.sched_proc_map_full
            ));
        }
        if self.sched_read_errors > 0 {
            parts.push(format!(
                "{} task_struct read errors",
                self.sched_read_errors
            ));
        }
        if self.decode_errors > 0 {
            parts.push(format!("{} records not decoded", self.decode_errors));
        }
        if parts.is_empty() {
            None
        } else {
            Some(parts.join(", "))
        }
    }
}
