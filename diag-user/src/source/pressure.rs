//! The pressure feed: reads `/proc/pressure/{cpu,memory,io}` and every
//! cgroup v2 directory's `*.pressure` files (the I/O and the parsing, at
//! the edge), and makes frames of them with
//! [`crate::aggregate::pressure::PressureAgg`].

use std::path::{Path, PathBuf};

use crate::aggregate::pressure::{
    PressureAgg, PressureFrame, PressureReading, Psi, PsiFiles, PsiLine, RESOURCES,
};

/// How often `record` and `serve` read the pressure files.
pub const PRESSURE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// At most this many cgroup directories are read (a host with more is
/// said: the rest count as skipped).
pub const MAX_CGROUP_DIRS: usize = 10_000;

/// Where cgroup2 is mounted (`/sys/fs/cgroup/unified` on hybrid hosts,
/// `/sys/fs/cgroup` on most current ones), from /proc/self/mountinfo.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_cgroup2_root(&mi)
}

fn parse_cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        right
            .starts_with("cgroup2 ")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The three pressure files in `dir` (named `cpu.pressure` ... when
/// `suffix`, else `cpu` ... as in /proc/pressure); skipped ones counted.
fn read_files(dir: &Path, suffix: bool, skipped: &mut u64) -> PsiFiles {
    let mut files: PsiFiles = [None; 3];
    for (i, r) in RESOURCES.iter().enumerate() {
        let name = if suffix {
            format!("{r}.pressure")
        } else {
            r.to_string()
        };
        match std::fs::read_to_string(dir.join(name)).map(|t| parse_psi(&t)) {
            Ok(Ok(p)) => files[i] = Some(p),
            _ => *skipped += 1,
        }
    }
    files
}

/// Read every pressure file now.
pub fn read(root: Option<&Path>) -> PressureReading {
    let mut r = PressureReading {
        ts_ns: crate::clock::boot_ns(),
        ..PressureReading::default()
    };
    r.host = read_files(Path::new("/proc/pressure"), false, &mut r.skipped);
    let Some(root) = root else { return r };
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if r.cgroups.len() >= MAX_CGROUP_DIRS {
            r.skipped += 3;
            continue;
        }
        // The root's files are the host's (/proc/pressure): not a cgroup
        // of its own.
        match dir.strip_prefix(root) {
            Ok(p) if p.as_os_str().is_empty() => {}
            Ok(p) => {
                let rel = format!("/{}", crate::text::printable(&p.to_string_lossy()));
                let files = read_files(&dir, true, &mut r.skipped);
                r.cgroups.push((rel, files));
            }
            Err(_) => continue,
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    r
}

/// Reads the pressure files every interval into frames.
#[derive(Debug, Default)]
pub struct PressureFeed {
    root: Option<PathBuf>,
    agg: PressureAgg,
}

impl PressureFeed {
    pub fn new() -> Self {
        PressureFeed {
            root: cgroup2_root(),
            agg: PressureAgg::new(),
        }
    }

    /// The frame of the interval since the last reading.
    pub fn read(&mut self) -> PressureFrame {
        self.read_below(self.root.clone().as_deref())
    }

    /// The frame of the pressure files of the host and the cgroups
    /// below `root`.
    fn read_below(&mut self, root: Option<&Path>) -> PressureFrame {
        let r = read(root);
        self.agg.update(&r)
    }
}

/// Parse one pressure file. A file with no `some` line, or a line that
/// is not `KIND avg10=X avg60=Y avg300=Z total=N`, is an error that says
/// what is wrong.
pub fn parse_psi(text: &str) -> Result<Psi, String> {
    let mut psi = Psi::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut it = line.split_whitespace();
        let kind = it.next().unwrap_or("");
        let slot = match kind {
            "some" => &mut psi.some,
            "full" => &mut psi.full,
            other => return Err(format!("a line of kind {other:?}, not some or full")),
        };
        let mut l = PsiLine::default();
        let mut have = [false; 4];
        for field in it {
            let (k, v) = field
                .split_once('=')
                .ok_or_else(|| format!("{kind}: {field:?} is not KEY=VALUE"))?;
            let avg = |v: &str| -> Result<f64, String> {
                match v.parse::<f64>() {
                    Ok(a) if (0.0..=100.0).contains(&a) => Ok(a),
                    _ => Err(format!("{kind}: {k}={v:?} is not a percentage")),
                }
            };
            match k {
                "avg10" => (l.avg10, have[0]) = (avg(v)?, true),
                "avg60" => (l.avg60, have[1]) = (avg(v)?, true),
                "avg300" => (l.avg300, have[2]) = (avg(v)?, true),
                "total" => {
                    l.total_us = v
                        .parse()
                        .map_err(|_| format!("{kind}: total={v:?} is not a count of us"))?;
                    have[3] = true;
                }
                _ => {}
            }
        }
        if have != [true; 4] {
            return Err(format!("{kind}: avg10, avg60, avg300 or total is missing"));
        }
        if slot.replace(l).is_some() {
            return Err(format!("two {kind} lines"));
        }
    }
    if psi.some.is_none() {
        return Err("no some line".into());
    }
    Ok(psi)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: &str = "some avg10=4.58 avg60=8.59 avg300=19.29 total=801083019\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
    #[test]
    fn parses_pressure_files() {
        let p = parse_psi(CPU).unwrap();
        let s = p.some.unwrap();
        assert_eq!((s.avg10, s.avg60, s.avg300), (4.58, 8.59, 19.29));
        assert_eq!(s.total_us, 801083019);
        assert_eq!(p.full.unwrap().total_us, 0);
        // Old kernels' cpu.pressure has no full line.
        let p = parse_psi("some avg10=0.00 avg60=0.00 avg300=0.00 total=7\n").unwrap();
        assert_eq!((p.some.unwrap().total_us, p.full), (7, None));
    }

    #[test]
    fn malformed_files_are_errors_that_say_why() {
        for (text, why) in [
            ("", "no some line"),
            ("full avg10=0 avg60=0 avg300=0 total=1\n", "no some line"),
            ("some avg10=0 avg60=0 total=1\n", "missing"),
            (
                "some avg10=x avg60=0 avg300=0 total=1\n",
                "not a percentage",
            ),
            (
                "some avg10=1e9 avg60=0 avg300=0 total=1\n",
                "not a percentage",
            ),
            (
                "some avg10=NaN avg60=0 avg300=0 total=1\n",
                "not a percentage",
            ),
            ("some avg10=0 avg60=0 avg300=0 total=-1\n", "not a count"),
            ("some avg10=0 avg60=0 avg300=0 total\n", "KEY=VALUE"),
            (
                "half avg10=0 avg60=0 avg300=0 total=1\n",
                "not some or full",
            ),
            (
                "some avg10=0 avg60=0 avg300=0 total=1\nsome avg10=0 avg60=0 avg300=0 total=1\n",
                "two some",
            ),
            ("\u{0}\u{ff}garbage", "not some or full"),
        ] {
            let e = parse_psi(text).unwrap_err();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn finds_the_cgroup2_mount() {
        let mi = "25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro\n\
                  26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup2_root(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(parse_cgroup2_root("garbage\n"), None);
    }

    #[test]
    fn reads_this_host() {
        let mut feed = PressureFeed::new();
        let f = feed.read();
        if std::path::Path::new("/proc/pressure/cpu").exists() {
            assert!(f.host.cpu.some.is_some());
        }
        assert!(
            !f.cgroups.iter().any(|c| c.cgroup == "/"),
            "the root is the host"
        );
        assert_eq!(f.damage(), None);
        // A tree of directories with pressure files, good and bad.
        let root = std::env::temp_dir().join(format!("diag-psi-{}", std::process::id()));
        let good = "some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n";
        for (dir, file, text) in [
            ("a", "cpu.pressure", good),
            ("a", "memory.pressure", good),
            ("a", "io.pressure", "garbage"),
            ("a/b", "cpu.pressure", good),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            std::fs::write(root.join(dir).join(file), text).unwrap();
        }
        let f = feed.read_below(Some(&root));
        let _ = std::fs::remove_dir_all(&root);
        let names: Vec<&str> = f.cgroups.iter().map(|c| c.cgroup.as_str()).collect();
        assert_eq!(names.len(), 2);
        assert!(
            names.contains(&"/a") && names.contains(&"/a/b"),
            "{names:?}"
        );
        let a = f.cgroup("/a").unwrap();
        assert_eq!(a.cpu.some.unwrap().total_us, 5);
        assert_eq!(a.io, Default::default(), "the malformed file is skipped");
        // /a's io, /a/b's memory and io: 3 skipped below the root, and
        // the host's files when it has none.
        let host_missing = (0..3).filter(|&i| f.host.get(i).some.is_none()).count() as u64;
        assert_eq!(f.skipped, 3 + host_missing);
    }
}
