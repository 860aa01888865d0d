//! tracefs: finding (or mounting) it, and reading tracepoint formats so that
//! field offsets come from the running kernel, never from constants.

use std::path::{Path, PathBuf};

use crate::error::EnvError;

/// Where the kernel has tracefs: the one mount point diag mounts on.
pub const STANDARD: &str = "/sys/kernel/tracing";
/// Where older set-ups have it (debugfs), looked at but never mounted on.
const FALLBACKS: &[&str] = &[STANDARD, "/sys/kernel/debug/tracing"];

/// tracefs, mounted by diag: unmounted (lazily, so a busy mount does not
/// block the exit) when dropped.
#[derive(Debug)]
pub struct Mounted {
    path: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        use std::ffi::CString;
        if let Ok(target) = CString::new(self.path.as_os_str().as_encoded_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Tracefs is readable at `p` (`events` is a directory there); an error
/// says why not when something is there but unreadable.
fn present(p: &Path) -> Result<bool, EnvError> {
    match std::fs::metadata(p.join("events")) {
        Ok(m) => Ok(m.is_dir()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o7777)
                .unwrap_or(0);
            Err(EnvError::TracefsUnreadable {
                path: p.display().to_string(),
                mode,
            })
        }
        Err(_) => Ok(false),
    }
}

/// Find tracefs at `preferred` (or, for the standard path, the usual
/// places). Only the kernel's own mount point, when it is an empty
/// directory, is mounted on: any other path is refused, so a mistyped
/// `--tracefs /proc` can never hide a directory. Returns the mount point
/// and, when diag mounted it, the guard that unmounts it.
pub fn ensure_mounted(
    preferred: &Path,
) -> Result<(PathBuf, Option<std::sync::Arc<Mounted>>), EnvError> {
    if present(preferred)? {
        return Ok((preferred.to_path_buf(), None));
    }
    if preferred != Path::new(STANDARD) {
        return Err(EnvError::TracefsRefused {
            path: preferred.display().to_string(),
            why: "it has no events directory".into(),
        });
    }
    for f in FALLBACKS {
        if present(Path::new(f))? {
            return Ok((PathBuf::from(f), None));
        }
    }
    let empty = std::fs::read_dir(preferred)
        .map(|mut d| d.next().is_none())
        .unwrap_or(false);
    if !empty {
        return Err(EnvError::TracefsRefused {
            path: preferred.display().to_string(),
            why: "it is not an empty directory".into(),
        });
    }
    mount(preferred)?;
    let guard = std::sync::Arc::new(Mounted {
        path: preferred.to_path_buf(),
    });
    if present(preferred)? {
        Ok((preferred.to_path_buf(), Some(guard)))
    } else {
        Err(EnvError::Tracefs {
            path: preferred.display().to_string(),
            why: "mounted, but it has no events directory".into(),
        })
    }
}

fn mount(at: &Path) -> Result<(), EnvError> {
    use std::ffi::CString;
    let err = |why: String| EnvError::Tracefs {
        path: at.display().to_string(),
        why,
    };
    let target = CString::new(at.as_os_str().as_encoded_bytes()).map_err(|e| err(e.to_string()))?;
    let fstype = c"tracefs";
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error().to_string()));
    }
    Ok(())
}

/// One field of a tracepoint's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub offset: u32,
    pub size: u32,
}

/// A tracepoint's record layout, from its `format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    pub name: String,
    pub fields: Vec<Field>,
    /// The `print fmt:` line, which carries symbol tables.
    pub print_fmt: String,
}

impl Format {
    /// Read `events/<category>/<name>/format` under tracefs.
    pub fn read(
        tracefs: &Path,
        category: &str,
        name: &str,
        what: &'static str,
    ) -> Result<Format, EnvError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(name)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|e| EnvError::MissingTracepoint {
            name: format!("{category}:{name}"),
            what,
            why: format!("{}: {e}", path.display()),
        })?;
        Format::parse(&text).map_err(|why| EnvError::TracepointFormat {
            name: format!("{category}:{name}"),
            why,
        })
    }

    pub fn parse(text: &str) -> Result<Format, String> {
        let mut name = String::new();
        let mut fields = Vec::new();
        let mut print_fmt = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(p) = line.strip_prefix("print fmt:") {
                print_fmt = p.trim().to_string();
                continue;
            }
            if let Some(n) = line.strip_prefix("name:") {
                name = n.trim().to_string();
                continue;
            }
            if !line.starts_with("field:") {
                continue;
            }
            let mut decl = None;
            let mut offset = None;
            let mut size = None;
            for part in line.split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d.trim());
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.trim().parse().ok();
                }
            }
            let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
                return Err(format!("cannot parse line `{line}`"));
            };
            let last = decl.split_whitespace().last().unwrap_or("");
            let fname = last.split('[').next().unwrap_or("").to_string();
            if fname.is_empty() {
                return Err(format!("field without a name in `{line}`"));
            }
            fields.push(Field {
                name: fname,
                offset,
                size,
            });
        }
        if fields.is_empty() {
            return Err("no fields".into());
        }
        Ok(Format {
            name,
            fields,
            print_fmt,
        })
    }

    /// The value names the kernel prints for `arg` (e.g. `REC->reason`),
    /// from `__print_symbolic(arg, { 0, "NAME" }, ...)` in the print format.
    /// Empty when there is none.
    pub fn symbols(&self, arg: &str) -> Vec<(i64, String)> {
        let key = format!("__print_symbolic({arg},");
        let Some(start) = self.print_fmt.find(&key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let mut rest = &self.print_fmt[start + key.len()..];
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            let Some(body) = rest.strip_prefix('{') else {
                break;
            };
            let Some(end) = body.find('}') else { break };
            let (num, name) = body[..end].split_once(',').unwrap_or(("", ""));
            let name = name.trim().trim_matches('"');
            match num.trim().parse::<i64>() {
                Ok(n) if !name.is_empty() => out.push((n, name.to_string())),
                _ => {}
            }
            rest = &body[end + 1..];
        }
        out
    }

    /// A field by name.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }

    /// The offset of `field`, checking it has the size diag expects.
    pub fn offset(&self, field: &str, size: u32) -> Result<u32, String> {
        let f = self
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| format!("no field `{field}`"))?;
        if f.size != size {
            return Err(format!(
                "field `{field}` is {} bytes, diag expects {size}",
                f.size
            ));
        }
        Ok(f.offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "name: inet_sock_set_state
ID: 1411
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;

print fmt: \"reason=%s\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 1, \"NO_SOCKET\" }), REC->x
";

    #[test]
    fn parses_kernel_format() {
        let f = Format::parse(SAMPLE).unwrap();
        assert_eq!(f.name, "inet_sock_set_state");
        assert_eq!(f.offset("skaddr", 8), Ok(8));
        assert_eq!(f.offset("oldstate", 4), Ok(16));
        assert_eq!(f.offset("saddr_v6", 16), Ok(40));
        assert!(f.offset("saddr_v6", 4).unwrap_err().contains("16 bytes"));
        assert!(f.offset("nope", 4).unwrap_err().contains("no field"));
        assert_eq!(
            f.symbols("REC->reason"),
            vec![
                (0, "NOT_SPECIFIED".to_string()),
                (1, "NO_SOCKET".to_string())
            ]
        );
        assert!(f.symbols("REC->state").is_empty());
    }

    #[test]
    fn rejects_garbage() {
        assert!(Format::parse("hello").is_err());
        assert!(Format::parse("field:int x; offset:zz; size:4;").is_err());
    }
}
