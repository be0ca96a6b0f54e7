//! gatewayd: the control plane of the XDP Direct Connect gateway.
//!
//! config (validated model) -> plan (desired map contents, pure) ->
//! datapath (typed facade over the pinned BPF maps; applies a plan as a
//! diff) -> daemon (run loop, control socket, peer ARP probes) -> stats.

pub mod config;
pub mod daemon;
pub mod datapath;
pub mod ebpf;
pub mod health;
pub mod kernel_events;
pub mod lab;
pub mod metrics;
pub mod netdev;
pub mod plan;
pub mod probe;
pub mod service;
pub mod stats;
