//! Creating a private output file safely (recordings, exports, reports),
//! even as root in a directory other users can write to.
//!
//! The rules: a new file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`,
//! mode 0600. An existing path is replaced only when it is a regular file
//! of ours with one link, opened with `O_NOFOLLOW` and checked on the open
//! descriptor (`fstat`); it is truncated and `fchmod`ed through that
//! descriptor, never by path. Symbolic links, devices, FIFOs, sockets,
//! directories, files of other users and hard-linked files are refused
//! with a sentence saying so. A recording is also locked (`flock`, exclusive,
//! non-blocking) before anything is truncated, so a second `diag record`
//! on the same file is refused and the first one's file is left alone.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    os::{fd::AsRawFd, unix::fs::PermissionsExt},
    path::Path,
};

/// Whether the file is to be locked against a second writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Exclusive,
    None,
}

fn refuse(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, why)
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Who holds a `flock` on the file (from /proc/locks), if known.
fn lock_holder(meta: &std::fs::Metadata) -> Option<u32> {
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let want = format!(
        "{:02x}:{:02x}:{}",
        libc::major(meta.dev()),
        libc::minor(meta.dev()),
        meta.ino()
    );
    locks.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        // "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
        let i = f.iter().position(|w| *w == "FLOCK")?;
        (f.get(i + 4) == Some(&want.as_str()))
            .then(|| f.get(i + 3)?.parse().ok())
            .flatten()
    })
}

fn flock(file: &File, meta: &std::fs::Metadata) -> io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        let who = lock_holder(meta)
            .map(|p| format!(" (pid {p})"))
            .unwrap_or_default();
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("another diag{who} is writing to it; stop that one, or give another file"),
        ));
    }
    Err(e)
}

/// Create `path` (or replace our own regular file there) for writing,
/// mode 0600, refusing anything else; see the module's rules.
pub fn create_private(path: &Path, lock: Lock) -> io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    match opts.open(path) {
        Ok(file) => {
            if lock == Lock::Exclusive {
                let meta = file.metadata()?;
                flock(&file, &meta)?;
            }
            return Ok(file);
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    // It exists: look before opening (opening a device or a FIFO can
    // have effects of its own), then check again what was opened.
    let before = std::fs::symlink_metadata(path)?;
    if !before.file_type().is_file() {
        return Err(refuse(format!(
            "it exists and is {}: diag writes only new files or regular files of its own (remove it, or give another name)",
            kind_of(&before.file_type())
        )));
    }
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                refuse("it is a symbolic link: diag does not write through symbolic links".into())
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.ino() != before.ino() || meta.dev() != before.dev() {
        return Err(refuse(
            "it was replaced while diag opened it: not written".into(),
        ));
    }
    if meta.uid() != me {
        return Err(refuse(format!(
            "it exists and belongs to uid {}, not to uid {me}: not replaced (remove it, or give another name)",
            meta.uid()
        )));
    }
    if meta.nlink() != 1 {
        return Err(refuse(format!(
            "it exists and has {} hard links: not replaced (remove it, or give another name)",
            meta.nlink()
        )));
    }
    if lock == Lock::Exclusive {
        flock(&file, &meta)?;
    }
    file.set_len(0)?;
    // fchmod through the descriptor: the path may be anything by now.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("diag-outfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_and_own_files_are_private_and_truncated() {
        let d = dir("own");
        let p = d.join("out");
        create_private(&p, Lock::None)
            .unwrap()
            .write_all(b"first, longer")
            .unwrap();
        assert_eq!(mode(&p), 0o600);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        create_private(&p, Lock::None)
            .unwrap()
            .write_all(b"2nd")
            .unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"2nd");
        assert_eq!(mode(&p), 0o600);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn symlinks_fifos_and_hard_links_are_refused_and_left_alone() {
        let d = dir("hostile");
        let target = d.join("target");
        std::fs::write(&target, b"precious").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = d.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = create_private(&link, Lock::Exclusive).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let hard = d.join("hard");
        std::fs::hard_link(&target, &hard).unwrap();
        let e = create_private(&hard, Lock::None).unwrap_err();
        assert!(e.to_string().contains("hard links"), "{e}");
        assert_eq!(std::fs::read(&target).unwrap(), b"precious");
        assert_eq!(mode(&target), 0o644);
        let fifo = d.join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
        let e = create_private(&fifo, Lock::None).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        let e = create_private(&d, Lock::None).unwrap_err();
        assert!(e.to_string().contains("directory"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_second_writer_is_refused_and_the_file_kept() {
        let d = dir("lock");
        let p = d.join("rec");
        let mut first = create_private(&p, Lock::Exclusive).unwrap();
        first.write_all(b"recording").unwrap();
        let e = create_private(&p, Lock::Exclusive).unwrap_err();
        assert!(e.to_string().contains("another diag"), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"recording");
        drop(first);
        create_private(&p, Lock::Exclusive).unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }
}
