//! One room across several hosts over NATS JetStream (docs/cluster.md).

pub mod events;
pub mod outage;
pub mod room;
