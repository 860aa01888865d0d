//! Sinks over the event bus. Formatting is pure; I/O is at the edge.

pub mod runq;
pub mod tail;
