//! The aggregation core: pure Rust, no I/O. Driven by decoded events and
//! a clock (boot-time ns), so unit tests can drive it without a kernel.
//! One module per probe family; views, recordings and the Prometheus
//! exporter read from here.

pub mod block;
pub mod close;
pub mod connect;
pub mod connfail;
pub mod drops;
pub mod filter;
pub mod hint;
pub mod histogram;
pub mod listen;
pub mod lock;
pub mod memory;
pub mod oom;
pub mod pressure;
pub mod process;
pub mod sched;
pub mod sums;
pub mod tcp;
