//! Per-program run time from the kernel's BPF statistics
//! (`kernel.bpf_stats_enabled`): what each of diag's programs costs per
//! run, next to the same programs built empty (the floor of an attached
//! program). A loaded host's noise moves these far less than throughput.

use std::{collections::BTreeMap, process::Command};

/// Run time (ns) and runs per program name, summed over rounds.
#[derive(Clone, Debug, Default)]
pub struct Tally(pub BTreeMap<String, (u64, u64)>);

impl Tally {
    /// Add the programs process `pid` holds (its fds' fdinfo names the
    /// program ids; bpftool names them).
    pub fn add_pid(&mut self, pid: u32) {
        let ids = prog_ids(pid);
        if ids.is_empty() {
            return;
        }
        let Ok(out) = Command::new("bpftool")
            .args(["prog", "show", "--json"])
            .output()
        else {
            return;
        };
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        for p in v.as_array().into_iter().flatten() {
            let Some(id) = p["id"].as_u64() else { continue };
            if !ids.contains(&id) {
                continue;
            }
            let name = p["name"].as_str().unwrap_or("?").to_string();
            let e = self.0.entry(name).or_default();
            e.0 += p["run_time_ns"].as_u64().unwrap_or(0);
            e.1 += p["run_cnt"].as_u64().unwrap_or(0);
        }
    }

    /// ns per run of `name`, if it ran.
    pub fn ns_per_run(&self, name: &str) -> Option<f64> {
        self.0
            .get(name)
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| *t as f64 / *n as f64)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.0
                .iter()
                .map(|(k, (t, n))| {
                    (
                        k.clone(),
                        serde_json::json!({"run_time_ns": t, "run_cnt": n}),
                    )
                })
                .collect(),
        )
    }
}

/// Ids of the BPF programs whose fds process `pid` holds.
fn prog_ids(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut ids = Vec::new();
    for fd in dir.flatten() {
        let is_prog = std::fs::read_link(fd.path())
            .is_ok_and(|t| t.to_string_lossy() == "anon_inode:bpf-prog");
        if !is_prog {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        if let Some(id) = info
            .lines()
            .find_map(|l| l.strip_prefix("prog_id:"))
            .and_then(|v| v.trim().parse().ok())
        {
            ids.push(id);
        }
    }
    ids
}

/// Statistics on for as long as the guard lives, as they were after.
pub struct StatsOn(Option<String>);

impl StatsOn {
    pub fn new() -> StatsOn {
        const P: &str = "/proc/sys/kernel/bpf_stats_enabled";
        let before = std::fs::read_to_string(P).ok();
        let _ = std::fs::write(P, "1");
        StatsOn(before)
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        if let Some(b) = &self.0 {
            let _ = std::fs::write("/proc/sys/kernel/bpf_stats_enabled", b.trim());
        }
    }
}

/// The per-program table of a bench section, with the sentence that says
/// what it is.
pub fn section(cols: &[(&str, &Tally)], rounds: usize, floor: Option<&str>) -> String {
    format!(
        "\nPer program (`kernel.bpf_stats_enabled`, on in diag's rows; ns per run over all {rounds} rounds, against the same programs built empty):\n\n{}",
        table(cols, rounds, floor)
    )
}

/// A Markdown table: one row per program that ran, a column of ns/run per
/// tracer (`cols`: its name and tally), runs per round from the first;
/// `floor` names the column the others are compared with.
pub fn table(cols: &[(&str, &Tally)], rounds: usize, floor: Option<&str>) -> String {
    let mut names: Vec<&String> = cols.iter().flat_map(|(_, t)| t.0.keys()).collect();
    names.sort();
    names.dedup();
    let mut md = String::from("| program | runs/round |");
    let mut sep = String::from("|---|---:|");
    for (c, _) in cols {
        md.push_str(&format!(" {c} ns/run |"));
        sep.push_str("---:|");
    }
    if floor.is_some() {
        md.push_str(" over the floor |");
        sep.push_str("---:|");
    }
    md.push('\n');
    md.push_str(&sep);
    md.push('\n');
    for name in names {
        let runs = cols
            .iter()
            .find_map(|(_, t)| t.0.get(name.as_str()).map(|(_, n)| *n))
            .unwrap_or(0);
        if runs == 0 {
            continue;
        }
        md.push_str(&format!("| `{name}` | {} |", runs / rounds.max(1) as u64));
        for (_, t) in cols {
            match t.ns_per_run(name) {
                Some(v) => md.push_str(&format!(" {v:.0} |")),
                None => md.push_str(" - |"),
            }
        }
        if let Some(f) = floor {
            let floor_ns = cols
                .iter()
                .find(|(c, _)| *c == f)
                .and_then(|(_, t)| t.ns_per_run(name));
            let first = cols.first().and_then(|(_, t)| t.ns_per_run(name));
            match (first, floor_ns) {
                (Some(a), Some(b)) => md.push_str(&format!(" {:+.0} ns |", a - b)),
                _ => md.push_str(" - |"),
            }
        }
        md.push('\n');
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_compares_with_the_floor() {
        let mut a = Tally::default();
        a.0.insert("inet_sock_set_state_btf".into(), (3_000, 10));
        let mut e = Tally::default();
        e.0.insert("inet_sock_set_state_btf".into(), (700, 10));
        e.0.insert("idle".into(), (0, 0));
        let t = table(&[("diag tail", &a), ("empty", &e)], 2, Some("empty"));
        assert!(
            t.contains("| `inet_sock_set_state_btf` | 5 | 300 | 70 | +230 ns |"),
            "{t}"
        );
        assert!(!t.contains("idle"), "{t}");
    }
}
