//! diag's user-space side: environment checks, loading the kernel programs,
//! reading their events, and the views built on them.
//!
//! The flow: a [`source`] (the live ring buffer and its pollers, or a
//! recording) puts [`bus::Msg`]s on the bus; [`sink::drive`] feeds them to
//! the sinks (the views in [`view`], the recorder in [`record`], the
//! exporter in [`serve`]), which fold them into the pure [`aggregate`]
//! core. [`cmd`] has one file per subcommand wiring a source to its sinks.

pub mod aggregate;
pub mod btf;
pub mod bus;
pub mod cli;
pub mod clock;
pub mod cmd;
pub mod enrich;
pub mod error;
pub mod host;
pub mod loader;
pub mod logging;
pub mod placement;
pub mod probes;
pub mod record;
pub mod recorder;
pub mod selftest;
pub mod serve;
pub mod sink;
pub mod source;
pub mod sys;
pub mod text;
pub mod tracefs;
pub mod view;

pub use bus::Msg;
pub use cmd::run;
