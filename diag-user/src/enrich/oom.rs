//! What procfs and cgroupfs add to an OOM kill, read right when the event
//! arrives (the victim may be gone by then, so the kernel program captures
//! the memory cgroups as inode numbers; here they become paths):
//! cgroup paths, the container id, and the biggest memory users in the
//! cgroup that ran out of memory (or system-wide), at bounded cost.

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use diag_common::{
    oom::{OomKillEvent, constraint},
    user::AnyEvent,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// At most this many cgroup directories are indexed.
const MAX_CGROUP_DIRS: usize = 20_000;
/// At most this many processes are looked at for the top list.
const MAX_PROCS: usize = 20_000;
/// How many top memory users are reported.
pub const TOP_N: usize = 5;

/// A process and its resident memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consumer {
    pub pid: u32,
    pub comm: String,
    pub rss_kb: u64,
}

/// What user space adds to an [`OomKillEvent`] (recordings keep it, in a
/// frame of its own after the kill's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct OomContext {
    /// Memory cgroup paths, relative to the memory hierarchy's root.
    pub victim_cgroup: Option<String>,
    pub trigger_cgroup: Option<String>,
    pub oom_cgroup: Option<String>,
    /// Container id (12 hex digits) from the victim's cgroup path.
    pub container_id: Option<String>,
    /// Biggest resident memory users right after the kill, other than the
    /// victim, in the OOM cgroup (memcg OOM) or system-wide.
    pub top: Vec<Consumer>,
    /// Where the top list comes from: a cgroup path or "system".
    pub top_scope: String,
}

/// Finds the memory cgroup hierarchy and maps directory inode numbers
/// (what the kernel program reports) to paths. The index is built at
/// start, so a cgroup removed right after the kill still resolves, and is
/// rebuilt on a miss.
#[derive(Debug, Default)]
pub struct CgroupIndex {
    root: Option<PathBuf>,
    by_ino: HashMap<u64, String>,
}

/// The mount point of the hierarchy holding the memory controller, from
/// `/proc/self/mountinfo` text: a cgroup v1 mount with the `memory` option,
/// else a cgroup2 mount (checked by the caller for the controller).
pub fn memory_mounts(mountinfo: &str) -> (Option<PathBuf>, Vec<PathBuf>) {
    let mut v1 = None;
    let mut v2 = Vec::new();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mount_point = left.split_whitespace().nth(4).unwrap_or("");
        let mut r = right.split_whitespace();
        let fstype = r.next().unwrap_or("");
        let _source = r.next();
        let opts = r.next().unwrap_or("");
        if fstype == "cgroup" && opts.split(',').any(|o| o == "memory") && v1.is_none() {
            v1 = Some(PathBuf::from(mount_point));
        } else if fstype == "cgroup2" {
            v2.push(PathBuf::from(mount_point));
        }
    }
    (v1, v2)
}

fn find_memory_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (v1, v2) = memory_mounts(&text);
    if v1.is_some() {
        return v1;
    }
    v2.into_iter().find(|p| {
        std::fs::read_to_string(p.join("cgroup.controllers"))
            .map(|c| c.split_whitespace().any(|w| w == "memory"))
            .unwrap_or(false)
    })
}

impl CgroupIndex {
    pub fn new() -> Self {
        let mut me = CgroupIndex {
            root: find_memory_root(),
            by_ino: HashMap::new(),
        };
        me.rebuild();
        me
    }

    /// The memory hierarchy's mount point, if any.
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    fn rebuild(&mut self) {
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut stack = vec![(root.clone(), String::from("/"))];
        let mut seen = 0;
        while let Some((dir, rel)) = stack.pop() {
            seen += 1;
            if seen > MAX_CGROUP_DIRS {
                break;
            }
            if let Ok(md) = std::fs::metadata(&dir) {
                self.by_ino.insert(md.ino(), rel.clone());
            }
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let child = if rel == "/" {
                        format!("/{name}")
                    } else {
                        format!("{rel}/{name}")
                    };
                    stack.push((e.path(), child));
                }
            }
        }
    }

    /// The path of the memory cgroup with this directory inode number.
    pub fn path(&mut self, ino: u64) -> Option<String> {
        if ino == 0 {
            return None;
        }
        if let Some(p) = self.by_ino.get(&ino) {
            return Some(p.clone());
        }
        self.rebuild();
        self.by_ino.get(&ino).cloned()
    }
}

/// The memory cgroup of a live (or zombie) process from
/// `/proc/PID/cgroup` text: the v1 `memory` line, else the v2 line.
pub fn memory_cgroup_of(proc_cgroup: &str) -> Option<String> {
    let mut v2 = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if ctrls.split(',').any(|c| c == "memory") {
            return Some(path.to_string());
        }
        if ctrls.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    v2
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A container id from a cgroup path, as docker, containerd, CRI-O and
/// podman name their cgroups: `/docker/<id>`, `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`,
/// kubepods `.../<id>`. The innermost 64-hex-digit id, shortened to 12.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path.rsplit('/').find_map(|seg| {
        let seg = seg.strip_suffix(".scope").unwrap_or(seg);
        let id = seg.rsplit(['-', ':']).next().unwrap_or(seg);
        is_hex64(id).then(|| id[..12].to_string())
    })
}

/// Resident set size in KiB from `/proc/PID/statm` text.
pub fn statm_rss_kb(statm: &str, page_kb: u64) -> Option<u64> {
    statm
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|p| p * page_kb)
}

fn consumer(pid: u32, page_kb: u64) -> Option<Consumer> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss_kb = statm_rss_kb(&statm, page_kb)?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default();
    Some(Consumer { pid, comm, rss_kb })
}

/// The `n` biggest of `pids` by RSS (kernel threads, with no RSS, left out).
pub fn top_of(pids: impl IntoIterator<Item = u32>, n: usize) -> Vec<Consumer> {
    let pk = crate::sys::page_kb();
    let mut all: Vec<Consumer> = pids
        .into_iter()
        .take(MAX_PROCS)
        .filter_map(|p| consumer(p, pk))
        .filter(|c| c.rss_kb > 0)
        .collect();
    rank(&mut all, n);
    all
}

/// Sort by RSS, biggest first (ties by pid), and keep `n`.
pub fn rank(all: &mut Vec<Consumer>, n: usize) {
    all.sort_by(|a, b| b.rss_kb.cmp(&a.rss_kb).then(a.pid.cmp(&b.pid)));
    all.truncate(n);
}

/// Processes in a cgroup directory and its descendants (bounded).
pub(crate) fn cgroup_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    let mut dirs = 0;
    while let Some(d) = stack.pop() {
        dirs += 1;
        if dirs > MAX_CGROUP_DIRS || pids.len() > MAX_PROCS {
            break;
        }
        if let Ok(text) = std::fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(text.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

pub(crate) fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                .take(MAX_PROCS)
                .collect()
        })
        .unwrap_or_default()
}

/// Everything user space adds to one kill. Blocking (procfs and cgroupfs
/// reads); run it off the event path.
pub fn context(ev: &OomKillEvent, index: &mut CgroupIndex) -> OomContext {
    let victim_pid = ev.victim_process();
    let mut victim_cgroup = index.path(ev.victim_memcg_ino);
    if victim_cgroup.is_none() {
        // No kernel fact: the victim may still be there (or a zombie).
        victim_cgroup = std::fs::read_to_string(format!("/proc/{victim_pid}/cgroup"))
            .ok()
            .and_then(|t| memory_cgroup_of(&t));
    }
    let trigger_cgroup = index.path(ev.trigger_memcg_ino).or_else(|| {
        std::fs::read_to_string(format!("/proc/{}/cgroup", ev.header.tgid))
            .ok()
            .and_then(|t| memory_cgroup_of(&t))
    });
    let oom_cgroup = index.path(ev.oom_memcg_ino);
    let container_id = victim_cgroup.as_deref().and_then(container_id);
    let others = |pids: Vec<u32>| pids.into_iter().filter(move |&p| p != victim_pid);
    let (top, top_scope) = match (&oom_cgroup, index.root()) {
        (Some(cg), Some(root)) if ev.constraint == constraint::MEMCG => {
            let dir = root.join(cg.trim_start_matches('/'));
            (top_of(others(cgroup_pids(&dir)), TOP_N), cg.clone())
        }
        _ => (top_of(others(all_pids()), TOP_N), "system".to_string()),
    };
    OomContext {
        victim_cgroup,
        trigger_cgroup,
        oom_cgroup,
        container_id,
        top,
        top_scope,
    }
}

/// The OOM enricher: a thread that reads procfs and cgroupfs for each
/// kill, off the event path, and hands back kills with their context in
/// the order they came.
pub struct Enricher {
    requests: Option<std::sync::mpsc::SyncSender<OomKillEvent>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Kills waiting for context beyond this are shown without it.
const ENRICH_QUEUE: usize = 256;

impl Enricher {
    /// Start the thread, if `enabled` (OOM kills are traced): otherwise
    /// nothing is indexed, every kill is refused and the receiver closes.
    pub fn start(enabled: bool) -> (Self, mpsc::UnboundedReceiver<(OomKillEvent, OomContext)>) {
        let (res_tx, res_rx) = mpsc::unbounded_channel();
        if !enabled {
            return (
                Enricher {
                    requests: None,
                    thread: None,
                },
                res_rx,
            );
        }
        let (req_tx, req_rx) = std::sync::mpsc::sync_channel::<OomKillEvent>(ENRICH_QUEUE);
        let thread = std::thread::spawn(move || {
            // Indexed before the first kill, so cgroups removed right after
            // a kill still resolve.
            let mut index = CgroupIndex::new();
            for ev in req_rx {
                let ctx = context(&ev, &mut index);
                if res_tx.send((ev, ctx)).is_err() {
                    break;
                }
            }
        });
        (
            Enricher {
                requests: Some(req_tx),
                thread: Some(thread),
            },
            res_rx,
        )
    }

    /// Queue a kill; false when the queue is full (or the thread gone).
    pub fn submit(&self, ev: OomKillEvent) -> bool {
        self.requests
            .as_ref()
            .is_some_and(|tx| tx.try_send(ev).is_ok())
    }

    /// Queue every OOM kill among `evs`; a kill the full queue refuses
    /// goes without context.
    pub fn submit_kills(&self, evs: &[AnyEvent]) {
        for e in evs {
            if let AnyEvent::OomKill(o) = e {
                let _ = self.submit(*o);
            }
        }
    }

    /// No more kills: the thread finishes the queued ones and stops.
    pub fn close(&mut self) {
        self.requests = None;
    }
}

impl Drop for Enricher {
    fn drop(&mut self) {
        self.requests = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_memory_mounts() {
        let mi = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
42 31 0:39 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw";
        let (v1, v2) = memory_mounts(mi);
        assert_eq!(v1, Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(v2, vec![PathBuf::from("/sys/fs/cgroup/unified")]);
        let (v1, v2) = memory_mounts("25 1 0:22 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw");
        assert_eq!(v1, None);
        assert_eq!(v2, vec![PathBuf::from("/sys/fs/cgroup")]);
        assert_eq!(memory_mounts("garbage\n"), (None, vec![]));
    }

    #[test]
    fn memory_cgroup_lines() {
        let v1 = "9:name=systemd:/\n4:memory:/process_api/37a4\n0::/\n";
        assert_eq!(memory_cgroup_of(v1).as_deref(), Some("/process_api/37a4"));
        let v2 = "0::/system.slice/nginx.service\n";
        assert_eq!(
            memory_cgroup_of(v2).as_deref(),
            Some("/system.slice/nginx.service")
        );
        assert_eq!(memory_cgroup_of(""), None);
        assert_eq!(memory_cgroup_of("nonsense"), None);
    }

    #[test]
    fn container_ids() {
        let id = "3f4e5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7081";
        assert_eq!(id.len(), 64);
        for path in [
            format!("/docker/{id}"),
            format!("/system.slice/docker-{id}.scope"),
            format!("/kubepods.slice/kubepods-burstable.slice/cri-containerd-{id}.scope"),
            format!("/kubepods/burstable/pod1234/{id}"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/system.slice/crio-{id}.scope"),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(&id[..12]), "{path}");
        }
        assert_eq!(container_id("/"), None);
        assert_eq!(
            container_id("/process_api/37a4de9bae568f7334189245e72052c6"),
            None
        );
        assert_eq!(container_id("/user.slice/user-1000.slice"), None);
    }

    #[test]
    fn statm_and_ranking() {
        assert_eq!(statm_rss_kb("1000 250 30 1 0 300 0\n", 4), Some(1000));
        assert_eq!(statm_rss_kb("1000", 4), None);
        assert_eq!(statm_rss_kb("", 4), None);
        let c = |pid, rss_kb| Consumer {
            pid,
            comm: format!("p{pid}"),
            rss_kb,
        };
        let mut all = vec![c(1, 10), c(2, 30), c(3, 20), c(4, 30)];
        rank(&mut all, 3);
        assert_eq!(all.iter().map(|c| c.pid).collect::<Vec<_>>(), vec![2, 4, 3]);
    }
}
