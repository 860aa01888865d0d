//! Recordings: a session's events, health and socket tables in a file,
//! replayed later through the same views, on any host, without root.

pub mod format;
