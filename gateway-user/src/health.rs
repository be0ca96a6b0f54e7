//! Line health: is each tunnel's customer router reachable, and is its
//! connection's link up?
//!
//! Every `[tunnel.health] interval_ms` the daemon sends a tagged ARP
//! request for the tunnel's `peer_ip` out of the connection's port (the
//! same frame as the peer-MAC probe, see `probe.rs`). The router's reply is
//! consumed by the XDP program and counted as the tunnel's `arp_learned`
//! fate, so "answered" means: that counter moved since the probe was sent.
//! `down_after` unanswered probes in a row mark the tunnel down,
//! `up_after` answered ones in a row mark it up again. Independently, the
//! connection's port is polled every `TICK` (IFF_UP and IFF_RUNNING): no
//! carrier marks all its tunnels down at once, and after the link returns
//! a tunnel needs `up_after` answers again.
//!
//! A change is one write to `TUNNEL_HEALTH[tunnel]`, which every next-hop
//! group holding the tunnel reads (see `gateway_common::TunnelHealth`), and
//! one log line. The state, since when and why are shown by `gatewayd
//! stats`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime},
};

use gateway_common::{down_reason, map_names as names, Fate, Tunnel};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::{config::HealthCfg, datapath::Datapath, netdev, plan::Plan, probe};

/// How often links are polled and due probes are sent. Bounds the extra
/// delay of a link-down failover and the jitter of probe intervals.
pub const TICK: Duration = Duration::from_millis(20);

/// What `gatewayd stats` shows per tunnel.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LineStatus {
    /// "up" or "down".
    pub state: String,
    /// When the tunnel entered this state (Unix time, milliseconds).
    pub since_unix_ms: u64,
    /// Why: "initial", "3 probes answered", "3 probes unanswered",
    /// "link down on line-a", ...
    pub reason: String,
}

/// The health of one tunnel: a pure state machine, fed probe verdicts and
/// link states.
#[derive(Clone, Debug)]
pub struct Tracker {
    cfg: HealthCfg,
    /// The probes' verdict (down after `down_after` misses, up after
    /// `up_after` answers).
    probes_up: bool,
    link_up: bool,
    misses: u32,
    answers: u32,
    since: SystemTime,
    reason: String,
}

/// A change of a tunnel's overall state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub up: bool,
    pub reason: String,
}

impl Tracker {
    /// A tunnel as first seen: `down` is what `TUNNEL_HEALTH` holds (a
    /// restarted daemon keeps a down line down until it answers).
    pub fn new(cfg: HealthCfg, down: u32, now: SystemTime) -> Self {
        let up = down == 0;
        Self {
            cfg,
            // Any down line must answer again before it carries traffic.
            probes_up: up,
            link_up: down & down_reason::LINK == 0,
            misses: 0,
            answers: 0,
            since: now,
            reason: if up {
                "initial".into()
            } else {
                "down when the daemon started".into()
            },
        }
    }

    pub fn up(&self) -> bool {
        self.probes_up && self.link_up
    }

    /// The `TUNNEL_HEALTH` value of this state.
    pub fn down_bits(&self) -> u32 {
        let mut bits = 0;
        if !self.probes_up {
            bits |= down_reason::PROBES;
        }
        if !self.link_up {
            bits |= down_reason::LINK;
        }
        bits
    }

    pub fn status(&self) -> LineStatus {
        LineStatus {
            state: if self.up() { "up" } else { "down" }.into(),
            since_unix_ms: self
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            reason: self.reason.clone(),
        }
    }

    fn settle(&mut self, was_up: bool, reason: String, now: SystemTime) -> Option<Change> {
        let up = self.up();
        if up == was_up {
            return None;
        }
        self.since = now;
        self.reason = reason.clone();
        Some(Change { up, reason })
    }

    /// The verdict on one probe.
    pub fn probe(&mut self, answered: bool, now: SystemTime) -> Option<Change> {
        let was_up = self.up();
        if answered {
            self.misses = 0;
            self.answers = self.answers.saturating_add(1);
            if !self.probes_up && self.answers >= self.cfg.up_after {
                self.probes_up = true;
            }
        } else {
            self.answers = 0;
            self.misses = self.misses.saturating_add(1);
            if self.probes_up && self.misses >= self.cfg.down_after {
                self.probes_up = false;
            }
        }
        let reason = if answered {
            format!("{} probes answered", self.answers)
        } else {
            format!("{} probes unanswered", self.misses)
        };
        self.settle(was_up, reason, now)
    }

    /// The connection's link state, `interface` naming it in the reason.
    pub fn link(&mut self, up: bool, interface: &str, now: SystemTime) -> Option<Change> {
        if up == self.link_up {
            return None;
        }
        let was_up = self.up();
        self.link_up = up;
        if !up {
            // After the link returns the router must prove itself again.
            self.probes_up = false;
            self.answers = 0;
            self.misses = 0;
        }
        let reason = if up {
            format!("link up on {interface}, waiting for probes")
        } else {
            format!("link down on {interface}")
        };
        // A tunnel that stays down (a link back without answers yet, a link
        // lost while probes already failed) still says why it is down now.
        if !was_up {
            self.reason = reason.clone();
        }
        self.settle(was_up, reason, now)
    }
}

/// One probed tunnel: its tracker and probe bookkeeping.
struct Line {
    tracker: Tracker,
    /// Connection port.
    ifindex: u32,
    interface: String,
    name: String,
    next_probe: Instant,
    /// `arp_learned` count when the outstanding probe was sent.
    outstanding: Option<u64>,
    frame: [u8; 46],
}

/// Every tunnel's line health, kept by the daemon.
#[derive(Default)]
pub struct Lines {
    lines: BTreeMap<u32, Line>,
}

impl Lines {
    /// State per tunnel id, for stats.
    pub fn status(&self) -> BTreeMap<u32, LineStatus> {
        self.lines
            .iter()
            .map(|(id, l)| (*id, l.tracker.status()))
            .collect()
    }

    /// Follows the plan: new tunnels get a tracker, removed ones go. A
    /// tunnel whose connection, peer or probe settings changed starts over.
    fn sync(&mut self, dp: &Datapath, plan: &Plan, now: Instant, wall: SystemTime) {
        self.lines.retain(|id, l| {
            plan.tunnels.get(id).is_some_and(|t| {
                t.connection_ifindex == l.ifindex
                    && l.frame == probe::arp_request_frame(t)
                    && plan.health.get(id) == Some(&l.tracker.cfg)
            })
        });
        let new: Vec<u32> = plan
            .tunnels
            .keys()
            .filter(|id| !self.lines.contains_key(id))
            .copied()
            .collect();
        if new.is_empty() {
            return;
        }
        let stored = dp.tunnel_health(new.iter().copied()).unwrap_or_default();
        for id in new {
            let t: &Tunnel = &plan.tunnels[&id];
            let meta = plan.tunnel_meta.iter().find(|m| m.id == id);
            let cfg = plan.health.get(&id).copied().unwrap_or_default();
            self.lines.insert(
                id,
                Line {
                    tracker: Tracker::new(cfg, stored.get(&id).copied().unwrap_or(0), wall),
                    ifindex: t.connection_ifindex,
                    interface: meta.map(|m| m.interface.clone()).unwrap_or_default(),
                    name: meta.map(|m| m.name.clone()).unwrap_or_default(),
                    next_probe: now,
                    outstanding: None,
                    frame: probe::arp_request_frame(t),
                },
            );
        }
    }

    /// One tick: links polled, verdicts on due probes, health written to
    /// the datapath for every change. Returns the probes to send now
    /// (connection ifindex, frame). Without `probing` (no packet socket)
    /// only link state counts.
    pub fn tick(&mut self, dp: &mut Datapath, plan: &Plan, probing: bool) -> Vec<(u32, [u8; 46])> {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.sync(dp, plan, now, wall);
        let mut changes: Vec<(u32, Change)> = Vec::new();

        // Links: one ioctl per connection port.
        let mut links: BTreeMap<&str, bool> = BTreeMap::new();
        for l in self.lines.values() {
            links
                .entry(l.interface.as_str())
                .or_insert_with(|| netdev::link_up(&l.interface).unwrap_or(false));
        }
        let links: BTreeMap<String, bool> =
            links.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        for (id, l) in &mut self.lines {
            let up = links.get(&l.interface).copied().unwrap_or(false);
            if !up {
                // Nothing to send on a dead port; no verdict either.
                l.outstanding = None;
            }
            if let Some(c) = l.tracker.link(up, &l.interface, wall) {
                changes.push((*id, c));
            }
        }

        // Probes due now (on live links).
        let due: Vec<u32> = self
            .lines
            .iter()
            .filter(|(_, l)| probing && l.next_probe <= now && l.tracker.link_up)
            .map(|(id, _)| *id)
            .collect();
        let mut frames = Vec::new();
        if !due.is_empty() {
            let counters = match dp.counters(names::TUNNEL_COUNTERS, due.iter().copied()) {
                Ok(c) => c,
                Err(e) => {
                    warn!("health probes: reading tunnel counters failed: {e:#}");
                    return frames;
                }
            };
            for id in due {
                let Some(l) = self.lines.get_mut(&id) else {
                    continue;
                };
                let replies = counters
                    .get(&id)
                    .map(|c| c.fate(Fate::ArpLearned))
                    .unwrap_or(0);
                if let Some(before) = l.outstanding {
                    if let Some(c) = l.tracker.probe(replies > before, wall) {
                        changes.push((id, c));
                    }
                }
                l.outstanding = Some(replies);
                let interval = Duration::from_millis(l.tracker.cfg.interval_ms as u64);
                // Keep the rhythm; skip ahead if the daemon fell behind.
                l.next_probe = (l.next_probe + interval).max(now + interval / 2);
                frames.push((l.ifindex, l.frame));
            }
        }

        for (id, change) in changes {
            let Some(l) = self.lines.get(&id) else {
                continue;
            };
            match dp.set_tunnel_health(id, l.tracker.down_bits()) {
                Ok(()) => info!(
                    "tunnel {} ({}) is {}: {}",
                    l.name,
                    l.interface,
                    if change.up { "up" } else { "down" },
                    change.reason
                ),
                Err(e) => warn!("tunnel {}: {e:#}", l.name),
            }
        }
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(HealthCfg::default(), 0, SystemTime::UNIX_EPOCH)
    }

    #[test]
    fn down_after_three_misses_up_after_three_answers() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut t = tracker();
        assert!(t.up());
        assert_eq!(t.probe(false, t0), None);
        assert_eq!(t.probe(false, t0), None);
        let c = t.probe(false, t0).expect("third miss");
        assert_eq!(
            c,
            Change {
                up: false,
                reason: "3 probes unanswered".into()
            }
        );
        assert_eq!(t.down_bits(), down_reason::PROBES);
        // An answer in between starts the count over.
        assert_eq!(t.probe(true, t0), None);
        assert_eq!(t.probe(false, t0), None);
        assert_eq!(t.probe(true, t0), None);
        assert_eq!(t.probe(true, t0), None);
        let c = t.probe(true, t0).expect("third answer");
        assert!(c.up);
        assert_eq!(t.down_bits(), 0);
        assert_eq!(t.status().state, "up");
        assert_eq!(t.status().reason, "3 probes answered");
    }

    #[test]
    fn link_down_is_immediate_and_recovery_needs_answers() {
        let t0 = SystemTime::UNIX_EPOCH;
        let mut t = tracker();
        let c = t.link(false, "line-a", t0).expect("down");
        assert_eq!(c.reason, "link down on line-a");
        assert_eq!(t.down_bits(), down_reason::LINK | down_reason::PROBES);
        assert_eq!(t.link(true, "line-a", t0), None, "not up before probes");
        assert_eq!(t.status().reason, "link up on line-a, waiting for probes");
        assert_eq!(t.probe(true, t0), None);
        assert_eq!(t.probe(true, t0), None);
        assert!(t.probe(true, t0).expect("up").up);
    }

    #[test]
    fn a_restarted_daemon_keeps_a_down_line_down() {
        let t = Tracker::new(
            HealthCfg::default(),
            down_reason::PROBES,
            SystemTime::UNIX_EPOCH,
        );
        assert!(!t.up());
        assert_eq!(t.down_bits(), down_reason::PROBES);
    }
}
