//! Test support shared by every crate of the workspace and by xtask: what "under CI" means and
//! how a test that cannot run here skips ([`ci`]), and a readable diff of two byte strings
//! ([`hexdiff`]). No dependencies: it builds in a moment, also for xtask.

pub mod ci;
pub mod hexdiff;
