//! Sinks that show: formatting is pure; output goes through [`out`].

pub mod conns;
pub mod export;
pub mod fmt;
pub mod out;
pub mod report;
pub mod runq;
pub mod tail;
pub mod threads;
pub mod top;
