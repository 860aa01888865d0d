//! Memory stalls: a child in a memory cgroup whose limit is below the file
//! it keeps re-reading (memory cgroup reclaim), and a child that overfills
//! its cgroup with a zram swap device on (swap-outs and swap-ins), checked
//! against the kernel's own accounting: /proc/vmstat (pgscan_*, pgsteal_*,
//! allocstall_*, pswpin, pswpout), the cgroup's memory.failcnt (v1) or
//! memory.events (v2), and the child's own major fault count.
//!
//! Why these counters are exact: the kernel adds the very values the
//! `mm_vmscan_lru_isolate` (inactive lists) and
//! `mm_vmscan_lru_shrink_inactive` tracepoints carry to pgscan_anon/file
//! and pgsteal_anon/file, for every reclaimer (memory cgroup reclaim too:
//! only the pgscan_direct/pgsteal_direct/allocstall split skips it), so
//! diag's host totals (processes + kernel threads) over its run equal the
//! vmstat deltas around it, as long as nothing reclaims in the moments
//! diag is starting or stopping (this host reclaims nothing by itself).
//! allocstall_* counts direct reclaim only: memory cgroup reclaim leaves
//! it alone, and so does diag's direct count.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use diag_tests::{
    Diag, MemCgroup, V1_ROOT, boot_ns, cgroup2_root, in_ci, require_root, serial, skipped,
};
use serde_json::Value;

const LOADGEN: &str = env!("CARGO_BIN_EXE_diag-loadgen");

fn vmstat() -> HashMap<String, u64> {
    std::fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

fn delta(a: &HashMap<String, u64>, b: &HashMap<String, u64>, keys: &[&str]) -> u64 {
    keys.iter()
        .map(|k| b.get(*k).copied().unwrap_or(0) - a.get(*k).copied().unwrap_or(0))
        .sum()
}

fn allocstall(v: &HashMap<String, u64>) -> u64 {
    v.iter()
        .filter(|(k, _)| k.starts_with("allocstall_"))
        .map(|(_, n)| n)
        .sum()
}

/// Sum a memory figure over intervals: of one process, of one cgroup
/// (by path), or of the whole host (processes + kernel threads).
enum Of<'a> {
    Pid(u32),
    Cgroup(&'a str),
    Host,
}

fn sum(intervals: &[Value], of: &Of, field: &str) -> u64 {
    let mut n = 0;
    for iv in intervals {
        let m = &iv["memory"];
        assert!(m.is_object(), "no memory object in {iv}");
        match of {
            Of::Pid(pid) => {
                for p in m["processes"].as_array().unwrap() {
                    if p["pid"] == *pid {
                        n += p[field].as_u64().unwrap();
                    }
                }
            }
            Of::Cgroup(path) => {
                for c in m["cgroups"].as_array().unwrap() {
                    if c["path"] == *path {
                        n += c[field].as_u64().unwrap();
                    }
                }
            }
            Of::Host => {
                n += m["total"][field].as_u64().unwrap();
                n += m["background"][field].as_u64().unwrap();
            }
        }
    }
    n
}

/// A file of `mib` MiB on a disk filesystem (not tmpfs: its pages must be
/// reclaimable page cache), out of the page cache; removed on drop.
struct CacheFile(PathBuf);

impl CacheFile {
    fn create(mib: usize) -> CacheFile {
        let path = PathBuf::from(format!("/var/tmp/diag-memtest-{}.bin", std::process::id()));
        let mut f = std::fs::File::create(&path).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            for c in buf.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                c.copy_from_slice(&x.to_ne_bytes());
            }
            f.write_all(&buf).unwrap();
        }
        f.sync_all().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: fadvise on our own open file. Written pages are charged to
        // the test's cgroup: dropped here, the child's reads charge its own.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0, "posix_fadvise");
        CacheFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for CacheFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Let diag read the exited child's last counters: two intervals that
/// end after now (lines already queued from before do not count).
fn settle(diag: &mut Diag) {
    let now = boot_ns();
    for i in 0..2 {
        diag.wait_interval_after(now, &format!("interval {} after the load", i + 1));
    }
}

fn read_u64(p: &Path) -> u64 {
    std::fs::read_to_string(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .trim()
        .parse()
        .unwrap()
}

/// A memory cgroup reclaim run: the child re-reads a 48 MiB file in a
/// cgroup limited to 16 MiB. Returns diag's intervals, the vmstat before
/// and after, and the child's pid.
fn reclaim_run(cg: &MemCgroup) -> (Vec<Value>, HashMap<String, u64>, HashMap<String, u64>, u32) {
    let file = CacheFile::create(48);
    let before = vmstat();
    let mut diag = Diag::start(&["runq", "--json", "--interval", "250ms", "--limit", "0"]);
    let mut child = cg.spawn(LOADGEN, &["reread", "3", file.path()]);
    let pid = child.id();
    let st = child.wait().unwrap();
    assert!(st.success(), "reread: {st}");
    settle(&mut diag);
    let out = diag.stop(libc::SIGINT);
    let after = vmstat();
    assert!(out.status.success(), "{:?}", out.stderr);
    (out.json(), before, after, pid)
}

/// The exact facts both cgroup versions share.
fn assert_reclaim(
    intervals: &[Value],
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    pid: u32,
    rel: &str,
) -> u64 {
    let episodes = sum(intervals, &Of::Pid(pid), "memcg_count");
    let stall_ns = sum(intervals, &Of::Pid(pid), "memcg_ns");
    let scanned = sum(intervals, &Of::Pid(pid), "scanned");
    let reclaimed = sum(intervals, &Of::Pid(pid), "reclaimed");
    let host_scanned = sum(intervals, &Of::Host, "scanned");
    let host_reclaimed = sum(intervals, &Of::Host, "reclaimed");
    let host_direct = sum(intervals, &Of::Host, "direct_count");
    let pgscan = delta(before, after, &["pgscan_anon", "pgscan_file"]);
    let pgsteal = delta(before, after, &["pgsteal_anon", "pgsteal_file"]);
    let stalls = allocstall(after) - allocstall(before);
    eprintln!(
        "child {pid}: {episodes} memcg reclaims, {stall_ns} ns, scanned {scanned}, reclaimed {reclaimed}; \
         host: diag scanned {host_scanned} reclaimed {host_reclaimed} direct {host_direct}; \
         vmstat pgscan {pgscan} pgsteal {pgsteal} allocstall {stalls}"
    );
    assert!(
        episodes > 10,
        "the child was not seen reclaiming: {episodes}"
    );
    assert!(stall_ns > 0 && reclaimed > 0 && scanned >= reclaimed);
    // The kernel's own totals, exactly.
    assert_eq!(
        host_scanned, pgscan,
        "pages scanned: diag vs vmstat pgscan_anon+pgscan_file"
    );
    assert_eq!(
        host_reclaimed, pgsteal,
        "pages reclaimed: diag vs vmstat pgsteal_anon+pgsteal_file"
    );
    assert_eq!(
        host_direct, stalls,
        "direct reclaims: diag vs vmstat allocstall_*"
    );
    // Only the child was in the cgroup: its figures are the cgroup's, and
    // the cgroup has the child's path.
    assert_eq!(
        sum(intervals, &Of::Cgroup(rel), "memcg_count"),
        episodes,
        "cgroup {rel}"
    );
    assert_eq!(
        sum(intervals, &Of::Cgroup(rel), "reclaimed"),
        reclaimed,
        "cgroup {rel}"
    );
    assert_eq!(
        sum(intervals, &Of::Cgroup(rel), "scanned"),
        scanned,
        "cgroup {rel}"
    );
    // No swap device: nothing swapped.
    episodes
}

#[test]
fn memcg_v1_reclaim_agrees_with_vmstat() {
    let name = "memcg_v1_reclaim_agrees_with_vmstat";
    if !require_root(name) {
        return;
    }
    let _guard = serial();
    if !Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
        if in_ci() {
            panic!("{name}: no cgroup v1 memory hierarchy at {V1_ROOT}");
        }
        skipped(name, "no cgroup v1 memory hierarchy");
        return;
    }
    let cg = MemCgroup::create(V1_ROOT, "memreclaim", "memory.limit_in_bytes", 16 << 20);
    let failcnt_before = read_u64(&cg.dir.join("memory.failcnt"));
    let (intervals, before, after, pid) = reclaim_run(&cg);
    let episodes = assert_reclaim(&intervals, &before, &after, pid, &cg.rel);
    // v1 has no count of reclaims per cgroup; every one follows at least
    // one failed charge (failcnt also counts the retries without reclaim).
    let failcnt = read_u64(&cg.dir.join("memory.failcnt")) - failcnt_before;
    assert!(
        failcnt >= episodes,
        "failcnt {failcnt} < {episodes} reclaims"
    );
    // The text table has the MEM column filled for the child.
    assert!(
        intervals
            .iter()
            .any(|iv| iv["memory"]["p99_ns"].as_u64().is_some())
    );
}

#[test]
fn memcg_v2_reclaim_agrees_with_memory_events() {
    let name = "memcg_v2_reclaim_agrees_with_memory_events";
    if !require_root(name) {
        return;
    }
    let _guard = serial();
    // Where cgroup2 has the memory controller (not on this project's
    // hybrid hosts: their v2 hierarchy has none; the v1 test runs there).
    let Some(root) = cgroup2_root().filter(|r| {
        std::fs::read_to_string(Path::new(r).join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
    }) else {
        skipped(
            name,
            "cgroup2 has no memory controller here (the v1 test covers it)",
        );
        return;
    };
    let cg = MemCgroup::create(&root, "memreclaim", "memory.max", 16 << 20);
    let events = |cg: &MemCgroup| -> u64 {
        std::fs::read_to_string(cg.dir.join("memory.events"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("max ").and_then(|v| v.trim().parse().ok()))
            .unwrap()
    };
    let max_before = events(&cg);
    let (intervals, before, after, pid) = reclaim_run(&cg);
    let episodes = assert_reclaim(&intervals, &before, &after, pid, &cg.rel);
    // v2 counts every reclaim forced by the limit: memory.events max.
    assert_eq!(events(&cg) - max_before, episodes, "memory.events max");
}

/// A zram swap device for one test: set up, and always torn down (the
/// host is left as found: no swap, zram0 reset).
struct ZramSwap;

const ZRAM: &str = "/dev/zram0";

impl ZramSwap {
    fn setup(test: &str) -> Option<ZramSwap> {
        let sys = Path::new("/sys/block/zram0");
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let why = if !sys.exists() {
            Some("no /dev/zram0 (modprobe zram)".to_string())
        } else if swaps.lines().count() > 1 {
            Some(format!(
                "the host already has swap ({})",
                swaps.lines().nth(1).unwrap_or("")
            ))
        } else if read_u64(&sys.join("disksize")) != 0 {
            Some("/dev/zram0 is in use".to_string())
        } else {
            None
        };
        if let Some(why) = why {
            if in_ci() {
                panic!("{test}: {why}");
            }
            skipped(test, &why);
            return None;
        }
        std::fs::write(sys.join("disksize"), "256M").unwrap();
        let guard = ZramSwap;
        let run = |cmd: &str, args: &[&str]| {
            let st = Command::new(cmd)
                .args(args)
                .output()
                .unwrap_or_else(|e| panic!("{cmd}: {e}"));
            assert!(
                st.status.success(),
                "{cmd} {args:?}: {}",
                String::from_utf8_lossy(&st.stderr)
            );
        };
        run("mkswap", &[ZRAM]);
        run("swapon", &[ZRAM]);
        Some(guard)
    }
}

impl Drop for ZramSwap {
    fn drop(&mut self) {
        let _ = Command::new("swapoff").arg(ZRAM).status();
        if std::fs::write("/sys/block/zram0/reset", "1").is_err() {
            eprintln!("WARNING: could not reset /dev/zram0");
        }
    }
}

#[test]
fn swap_ins_agree_with_pswpin() {
    let name = "swap_ins_agree_with_pswpin";
    if !require_root(name) {
        return;
    }
    let _guard = serial();
    if !Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
        if in_ci() {
            panic!("{name}: no cgroup v1 memory hierarchy at {V1_ROOT}");
        }
        skipped(name, "no cgroup v1 memory hierarchy");
        return;
    }
    let Some(_swap) = ZramSwap::setup(name) else {
        return;
    };
    let cg = MemCgroup::create(V1_ROOT, "memswap", "memory.limit_in_bytes", 32 << 20);
    cg.write("memory.swappiness", "60");
    let before = vmstat();
    let mut diag = Diag::start(&["runq", "--json", "--interval", "250ms", "--limit", "0"]);
    // 64 MiB in 32: the first pass swaps out, the next two swap in.
    let mut child = cg.spawn(LOADGEN, &["memhog", "64", "3"]);
    let pid = child.id();
    let mut majflt = None;
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("MAJFLT ") {
            majflt = Some(n.parse::<u64>().unwrap());
        }
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "memhog: {st}");
    settle(&mut diag);
    let out = diag.stop(libc::SIGINT);
    let after = vmstat();
    assert!(out.status.success(), "{:?}", out.stderr);
    let intervals = out.json();
    let swapin = sum(&intervals, &Of::Pid(pid), "swapin_pages");
    let swapin_ns = sum(&intervals, &Of::Pid(pid), "swapin_ns");
    let swapout = sum(&intervals, &Of::Pid(pid), "swapout_pages");
    let host_out = sum(&intervals, &Of::Host, "swapout_pages");
    let host_in = sum(&intervals, &Of::Host, "swapin_pages");
    let pswpin = delta(&before, &after, &["pswpin"]);
    let pswpout = delta(&before, &after, &["pswpout"]);
    let majflt = majflt.expect("memhog's MAJFLT line");
    eprintln!(
        "child {pid}: swapped in {swapin} pages ({swapin_ns} ns of I/O), out {swapout}; \
         host in {host_in} out {host_out}; vmstat pswpin {pswpin} pswpout {pswpout}; child majflt {majflt}"
    );
    assert!(
        swapin > 1000,
        "the child was not seen swapping in: {swapin}"
    );
    // The swap device is the test's own, made just now: every page read
    // from it is the child's, and every page written to it came from the
    // cgroup's reclaim (the child's own) or kswapd.
    assert_eq!(
        swapin, pswpin,
        "pages swapped in: diag for pid {pid} vs vmstat pswpin"
    );
    assert_eq!(
        host_out, pswpout,
        "pages swapped out: diag vs vmstat pswpout"
    );
    assert!(swapout > 0 && swapin_ns > 0);
    // A swap-in fault is a major fault of the child's (getrusage, the
    // kernel's own count): one page each when zram's synchronous path
    // skips the swap cache, a few more with swap readahead (seen: 32799
    // faults for 32812 pages). Its other major faults are file pages.
    assert!(
        majflt <= swapin + 200 && majflt * 100 >= swapin * 95,
        "majflt {majflt} vs swap-ins {swapin}"
    );
    assert_eq!(
        sum(&intervals, &Of::Cgroup(&cg.rel), "swapin_pages"),
        swapin
    );
    // diag's MAJFLT is /proc/PID/stat's, read each interval: the child's
    // faults up to its last reading (not those after it, before its exit).
    let ours = sum(&intervals, &Of::Pid(pid), "majflt");
    assert!(
        ours > 0 && ours <= majflt,
        "diag majflt {ours} vs the child's {majflt}"
    );
    // And the reclaim that swapped out was the cgroup's.
    assert!(sum(&intervals, &Of::Pid(pid), "memcg_count") > 0);
}

#[test]
fn memstall_events_name_the_cgroup_at_its_limit() {
    let name = "memstall_events_name_the_cgroup_at_its_limit";
    if !require_root(name) {
        return;
    }
    let _guard = serial();
    if !Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
        if in_ci() {
            panic!("{name}: no cgroup v1 memory hierarchy at {V1_ROOT}");
        }
        skipped(name, "no cgroup v1 memory hierarchy");
        return;
    }
    let file = CacheFile::create(48);
    let cg = MemCgroup::create(V1_ROOT, "memstall", "memory.limit_in_bytes", 16 << 20);
    // Every episode is a stall at a 1 ns threshold.
    let diag = Diag::start(&[
        "tail",
        "--events",
        "memstall",
        "--json",
        "--mem-stall-threshold",
        "1ns",
    ]);
    let mut child = cg.spawn(LOADGEN, &["reread", "1", file.path()]);
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    let out = diag.stop(libc::SIGINT);
    assert!(out.status.success(), "{:?}", out.stderr);
    let evs: Vec<Value> = out.json().into_iter().filter(|e| e["pid"] == pid).collect();
    assert!(
        !evs.is_empty(),
        "no memstall events for pid {pid}: {:?}",
        out.stderr
    );
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(&cg.dir).unwrap().ino();
    for e in &evs {
        assert_eq!(e["event"], "memstall", "{e}");
        assert_eq!(e["kind"], "memcg-reclaim", "{e}");
        assert_eq!(e["memcg_ino"], ino, "{e}");
        assert_eq!(e["limit_memcg_ino"], ino, "{e}");
        assert_eq!(e["limit_memcg"], cg.rel.as_str(), "{e}");
        assert_eq!(e["limit_pages"], (16u64 << 20) / 4096, "{e}");
        assert!(e["duration_ns"].as_u64().unwrap() > 0);
    }
}

/// Sum every sample of a metric family (all label sets) in an exposition.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn serve_and_its_recording_carry_memory_stalls() {
    let name = "serve_and_its_recording_carry_memory_stalls";
    if !require_root(name) {
        return;
    }
    let _guard = serial();
    if !Path::new(V1_ROOT).join("memory.limit_in_bytes").exists() {
        if in_ci() {
            panic!("{name}: no cgroup v1 memory hierarchy at {V1_ROOT}");
        }
        skipped(name, "no cgroup v1 memory hierarchy");
        return;
    }
    let file = CacheFile::create(48);
    let cg = MemCgroup::create(V1_ROOT, "memserve", "memory.limit_in_bytes", 16 << 20);
    let dir = diag_tests::TempDir::new("memserve");
    let rec = dir.path("m.diag");
    let port = diag_tests::free_port();
    let before = vmstat();
    let diag = Diag::start(&[
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--record",
        rec.to_str().unwrap(),
    ]);
    let mut child = cg.spawn(LOADGEN, &["reread", "3", file.path()]);
    let pid = child.id();
    assert!(child.wait().unwrap().success());
    // The memory feed reads once a second: wait for a frame after the
    // child's end (its scanned pages stop growing), then one more.
    let memcg = format!("diag_memcg_limit_reclaims_total{{memcg=\"{}\"}}", cg.rel);
    diag_tests::wait_until(
        Duration::from_secs(10),
        "the memory cgroup's series",
        || diag_tests::scrape_metrics(port).contains(&memcg),
    );
    let mut last = 0;
    let mut text = String::new();
    diag_tests::wait_until(Duration::from_secs(10), "a steady scanned count", || {
        std::thread::sleep(Duration::from_millis(1200));
        text = diag_tests::scrape_metrics(port);
        let n = metric_sum(&text, "diag_memory_pages_scanned_total");
        let steady = n == last && n > 0;
        last = n;
        steady
    });
    let out = diag.stop(libc::SIGINT);
    let after = vmstat();
    assert!(out.status.success(), "{:?}", out.stderr);
    let pgscan = delta(&before, &after, &["pgscan_anon", "pgscan_file"]);
    let pgsteal = delta(&before, &after, &["pgsteal_anon", "pgsteal_file"]);
    let scanned = metric_sum(&text, "diag_memory_pages_scanned_total")
        + metric_sum(&text, "diag_memory_kernel_pages_scanned_total");
    let reclaimed = metric_sum(&text, "diag_memory_pages_reclaimed_total")
        + metric_sum(&text, "diag_memory_kernel_pages_reclaimed_total");
    eprintln!(
        "serve: scanned {scanned} reclaimed {reclaimed}; vmstat pgscan {pgscan} pgsteal {pgsteal}"
    );
    assert_eq!(scanned, pgscan, "served pages scanned vs vmstat");
    assert_eq!(reclaimed, pgsteal, "served pages reclaimed vs vmstat");
    let episodes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(&memcg)?.trim().parse().ok())
        .unwrap();
    assert!(episodes > 10, "{episodes} reclaims forced by the limit");
    assert!(
        text.contains("diag_memory_stall_latency_seconds_bucket"),
        "{text}"
    );

    // The recording: memory frames with the same figures, and the report.
    let export = Command::new(diag_tests::diag_bin())
        .args(["export", "--format", "jsonl"])
        .arg(&rec)
        .output()
        .unwrap();
    assert!(export.status.success());
    let frames: Vec<Value> = String::from_utf8_lossy(&export.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "memory")
        .collect();
    assert!(!frames.is_empty(), "no memory frames recorded");
    let rec_scanned: u64 = frames
        .iter()
        .map(|f| {
            f["total"]["scanned"].as_u64().unwrap() + f["background"]["scanned"].as_u64().unwrap()
        })
        .sum();
    assert_eq!(rec_scanned, pgscan, "recorded pages scanned vs vmstat");
    let rec_episodes: u64 = frames
        .iter()
        .flat_map(|f| f["cgroups"].as_array().cloned().unwrap_or_default())
        .filter(|c| c["path"] == cg.rel.as_str())
        .map(|c| c["memcg_count"].as_u64().unwrap())
        .sum();
    assert_eq!(
        rec_episodes, episodes,
        "recorded vs served reclaims of {}",
        cg.rel
    );
    let report = Command::new(diag_tests::diag_bin())
        .arg("report")
        .arg(&rec)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&report.stdout);
    let sat = report.split("2. SATURATION").nth(1).unwrap_or("");
    assert!(
        sat.contains("Processes stalled longest in memory:"),
        "{report}"
    );
    assert!(sat.contains(&format!("pid {pid}")), "{report}");
    assert!(sat.contains(&format!("{}  ", cg.rel)), "{report}");
    assert!(
        sat.contains(&format!("{pgscan} pages scanned"))
            || sat.contains(&format!("pgscan {pgscan}")),
        "{report}"
    );
}
