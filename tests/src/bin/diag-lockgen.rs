//! Lock workloads with known facts, for diag's lock tests. Every mode
//! prints `PID <pid>` first, then `KEY VALUE` lines naming its threads
//! (`gettid()`), its locks (addresses in its own memory) and what it
//! measured itself (`CLOCK_MONOTONIC`), and `READY` once its threads are
//! where the mode puts them. glibc's pthread locks, called directly.
//!
//! diag-lockgen mutex K HOLD_MS [LINGER_MS]
//!     A holder thread takes a mutex and keeps it HOLD_MS, K times; a
//!     waiter thread asks for it each time just after the holder took it.
//!     Prints `MUTEX`, `HOLDER`, `WAITER`, one `WAITED <ns>` per round
//!     (the waiter's own time in pthread_mutex_lock), `DONE`, then stays
//!     LINGER_MS (sleeping) before it exits.
//! diag-lockgen cond K DELAY_MS
//!     A waiter waits on a condition variable; a signaller signals it
//!     DELAY_MS later, K times. Prints `COND`, `SIGNALLER`, `WAITER`,
//!     `WAITED <ns>` per round, `DONE`.
//! diag-lockgen deadlock
//!     Threads A and B take mutexes MA and MB, then each asks for the
//!     other's: they wait forever (kill the process). Prints `MA`, `MB`,
//!     `A`, `B`, `READY`.
//! diag-lockgen dump
//!     A spinning thread, one in nanosleep, one blocked reading a pipe,
//!     one waiting on a mutex that the main thread holds (the main thread
//!     sleeps). Prints `SPIN`, `SLEEP`, `PIPE`, `MUTEXWAIT`, `MAIN`,
//!     `MUTEX`, `READY`; runs until killed.
//! diag-lockgen pingpong N
//!     Two threads hand a turn to each other N times through a mutex and
//!     a condition variable (a futex wait and wake per hand-over). Prints
//!     `ELAPSED_NS <ns>`.

use std::{
    io::Write,
    process::ExitCode,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

struct Mutex(std::cell::UnsafeCell<libc::pthread_mutex_t>);
// SAFETY: a pthread mutex is made to be shared between threads.
unsafe impl Sync for Mutex {}
impl Mutex {
    const fn new() -> Mutex {
        Mutex(std::cell::UnsafeCell::new(libc::PTHREAD_MUTEX_INITIALIZER))
    }
    fn lock(&self) {
        // SAFETY: an initialized mutex, in a static.
        unsafe { libc::pthread_mutex_lock(self.0.get()) };
    }
    fn unlock(&self) {
        // SAFETY: locked by this thread.
        unsafe { libc::pthread_mutex_unlock(self.0.get()) };
    }
    fn addr(&self) -> usize {
        self.0.get() as usize
    }
}

struct Cond(std::cell::UnsafeCell<libc::pthread_cond_t>);
// SAFETY: a pthread condition variable is made to be shared.
unsafe impl Sync for Cond {}
impl Cond {
    const fn new() -> Cond {
        Cond(std::cell::UnsafeCell::new(libc::PTHREAD_COND_INITIALIZER))
    }
    fn wait(&self, m: &Mutex) {
        // SAFETY: both initialized, m locked by this thread.
        unsafe { libc::pthread_cond_wait(self.0.get(), m.0.get()) };
    }
    fn signal(&self) {
        // SAFETY: initialized.
        unsafe { libc::pthread_cond_signal(self.0.get()) };
    }
    fn addr(&self) -> usize {
        self.0.get() as usize
    }
}

static M1: Mutex = Mutex::new();
static M2: Mutex = Mutex::new();
static C1: Cond = Cond::new();
static ROUND: AtomicU32 = AtomicU32::new(0);
static DONE: AtomicU32 = AtomicU32::new(0);
static TURN: AtomicU32 = AtomicU32::new(0);

fn tid() -> i32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() }
}

fn say(line: String) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn wait_for(a: &AtomicU32, v: u32) {
    while a.load(Ordering::SeqCst) < v {
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn mutex(k: u32, hold: Duration, linger: Duration) {
    say(format!("MUTEX {:#x}", M1.addr()));
    let holder = std::thread::spawn(move || {
        say(format!("HOLDER {}", tid()));
        for i in 1..=k {
            M1.lock();
            ROUND.store(i, Ordering::SeqCst);
            std::thread::sleep(hold);
            M1.unlock();
            wait_for(&DONE, i);
        }
    });
    let waiter = std::thread::spawn(move || {
        say(format!("WAITER {}", tid()));
        for i in 1..=k {
            wait_for(&ROUND, i);
            let t0 = Instant::now();
            M1.lock();
            let waited = t0.elapsed();
            M1.unlock();
            say(format!("WAITED {}", waited.as_nanos()));
            DONE.store(i, Ordering::SeqCst);
        }
    });
    holder.join().unwrap();
    waiter.join().unwrap();
    say("DONE".into());
    std::thread::sleep(linger);
}

fn cond(k: u32, delay: Duration) {
    say(format!("COND {:#x}", C1.addr()));
    say(format!("CONDMUTEX {:#x}", M1.addr()));
    let waiter = std::thread::spawn(move || {
        say(format!("WAITER {}", tid()));
        for i in 1..=k {
            M1.lock();
            ROUND.store(i, Ordering::SeqCst);
            let t0 = Instant::now();
            while DONE.load(Ordering::SeqCst) < i {
                C1.wait(&M1);
            }
            let waited = t0.elapsed();
            M1.unlock();
            say(format!("WAITED {}", waited.as_nanos()));
        }
    });
    let signaller = std::thread::spawn(move || {
        say(format!("SIGNALLER {}", tid()));
        for i in 1..=k {
            wait_for(&ROUND, i);
            std::thread::sleep(delay);
            M1.lock();
            DONE.store(i, Ordering::SeqCst);
            C1.signal();
            M1.unlock();
        }
    });
    waiter.join().unwrap();
    signaller.join().unwrap();
    say("DONE".into());
}

fn deadlock() -> ! {
    say(format!("MA {:#x}", M1.addr()));
    say(format!("MB {:#x}", M2.addr()));
    let a = std::thread::spawn(|| {
        say(format!("A {}", tid()));
        M1.lock();
        ROUND.fetch_add(1, Ordering::SeqCst);
        wait_for(&ROUND, 2);
        M2.lock();
    });
    let b = std::thread::spawn(|| {
        say(format!("B {}", tid()));
        M2.lock();
        ROUND.fetch_add(1, Ordering::SeqCst);
        wait_for(&ROUND, 2);
        M1.lock();
    });
    wait_for(&ROUND, 2);
    std::thread::sleep(Duration::from_millis(100));
    say("READY".into());
    let _ = (a.join(), b.join());
    unreachable!("deadlocked threads never return");
}

fn dump() -> ! {
    say(format!("MUTEX {:#x}", M1.addr()));
    say(format!("MAIN {}", tid()));
    M1.lock();
    std::thread::spawn(|| {
        say(format!("SPIN {}", tid()));
        let mut x: u64 = 0;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    });
    std::thread::spawn(|| {
        say(format!("SLEEP {}", tid()));
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    });
    let mut fds = [0i32; 2];
    // SAFETY: a valid array of two ints.
    unsafe { libc::pipe(fds.as_mut_ptr()) };
    let rfd = fds[0];
    say(format!("PIPEFD {rfd}"));
    std::thread::spawn(move || {
        say(format!("PIPE {}", tid()));
        let mut b = [0u8; 1];
        loop {
            // SAFETY: a valid buffer of one byte.
            unsafe { libc::read(rfd, b.as_mut_ptr().cast(), 1) };
        }
    });
    std::thread::spawn(|| {
        say(format!("MUTEXWAIT {}", tid()));
        M1.lock();
        M1.unlock();
    });
    std::thread::sleep(Duration::from_millis(300));
    say("READY".into());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn pingpong(n: u32) {
    let t0 = Instant::now();
    let side = |me: u32| {
        move || {
            for _ in 0..n {
                M1.lock();
                while TURN.load(Ordering::SeqCst) != me {
                    C1.wait(&M1);
                }
                TURN.store(1 - me, Ordering::SeqCst);
                C1.signal();
                M1.unlock();
            }
        }
    };
    let a = std::thread::spawn(side(0));
    let b = std::thread::spawn(side(1));
    a.join().unwrap();
    b.join().unwrap();
    say(format!("ELAPSED_NS {}", t0.elapsed().as_nanos()));
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: u64| -> u64 {
        args.get(i)
            .map(|s| s.parse().expect("a number"))
            .unwrap_or(d)
    };
    say(format!("PID {}", std::process::id()));
    match args.first().map(String::as_str) {
        Some("mutex") => mutex(
            num(1, 5) as u32,
            Duration::from_millis(num(2, 50)),
            Duration::from_millis(num(3, 0)),
        ),
        Some("cond") => cond(num(1, 5) as u32, Duration::from_millis(num(2, 50))),
        Some("deadlock") => deadlock(),
        Some("dump") => dump(),
        Some("pingpong") => pingpong(num(1, 100_000) as u32),
        _ => {
            eprintln!(
                "usage: diag-lockgen mutex K HOLD_MS | cond K DELAY_MS | deadlock | dump | pingpong N"
            );
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
