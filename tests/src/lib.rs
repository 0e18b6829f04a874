//! The privileged test harness.
