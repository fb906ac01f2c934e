//! Admin listener (wired in by the other engineer).
pub mod page;
