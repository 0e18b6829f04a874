//! Deciding: the model a configuration describes, the policy that picks each target's paths,
//! every path's health (the rise/fall tracker and the probe loop that feeds it), and which VIP
//! addresses may be announced.

pub mod announce;
pub mod health;
pub mod model;
pub mod monitor;
pub mod policy;
