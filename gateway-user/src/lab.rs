//! `gatewayd lab-vlan` (hidden): test-lab helper that turns a veth into an
//! 802.1Q trunk without the 8021q module. Loads the `lab-vlan` tc programs
//! (gateway-ebpf/src/bin/lab_vlan.rs), fills their MAC -> VLAN map and
//! attaches them to the interface's clsact qdisc through netlink, so they
//! stay attached after this process exits. Running it again on the same
//! interface replaces the previous programs and map.
//!
//! Not used by the gateway itself: the customer-router namespaces of the
//! integration tests and the demo run it.

use anyhow::{bail, Context as _, Result};
use aya::{
    maps::HashMap,
    programs::{
        tc::{self, NlOptions, TcAttachOptions, TcError},
        SchedClassifier, TcAttachType,
    },
    EbpfLoader,
};

/// The lab-vlan tc programs, built by build.rs.
static LAB_VLAN_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lab-vlan"));

/// Map of the object: source MAC + 2 zero bytes -> VLAN id.
pub const LAB_VLAN_MAP: &str = "LAB_VLAN_BY_MAC";
/// Program names (also the names of their tc filters).
pub const LAB_VLAN_EGRESS: &str = "lab_vlan_egress";
pub const LAB_VLAN_INGRESS: &str = "lab_vlan_ingress";
/// Capacity of `LAB_VLAN_BY_MAC` in the object.
pub const LAB_VLAN_MAX_MACS: usize = 64;

#[derive(clap::Args, Debug, Clone)]
pub struct LabVlanArgs {
    /// The trunk veth (in the current network namespace).
    #[arg(long)]
    pub interface: String,
    /// VID=MAC: frames sent from MAC (the trunk's own MAC or a macvlan's on
    /// top of it) are tagged with VLAN VID; tagged frames are untagged on
    /// receive. Repeat for every sub-interface.
    #[arg(long = "vlan", value_parser = parse_vlan_mac, required = true)]
    pub vlans: Vec<(u16, [u8; 6])>,
}

/// Parses `VID=MAC`, e.g. `100=02:00:00:00:01:01`; VID in 1..=4094.
pub fn parse_vlan_mac(s: &str) -> Result<(u16, [u8; 6]), String> {
    let (vid, mac) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected VID=MAC, e.g. 100=02:00:00:00:01:01"))?;
    let vid: u16 = vid
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: VLAN id {vid:?} is not a number"))?;
    if !(1..=4094).contains(&vid) {
        return Err(format!("{s:?}: VLAN id {vid} is outside 1..=4094"));
    }
    let mac = parse_mac(mac.trim()).ok_or_else(|| {
        format!("{s:?}: {mac:?} is not a MAC address (six hex bytes separated by ':')")
    })?;
    Ok((vid, mac))
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Loads, fills and attaches the lab-vlan programs, then returns; they stay
/// attached (netlink tc filters hold them) until the qdisc or the interface
/// goes away, or the next `run_lab_vlan` on this interface replaces them.
pub fn run_lab_vlan(args: &LabVlanArgs) -> Result<()> {
    let iface = args.interface.as_str();
    if LAB_VLAN_OBJECT.is_empty() {
        bail!(
            "this gatewayd was built without its eBPF programs (AYA_BUILD_SKIP); rebuild after `cargo xtask setup`"
        );
    }
    if args.vlans.is_empty() {
        bail!("no --vlan VID=MAC given for {iface}");
    }
    if args.vlans.len() > LAB_VLAN_MAX_MACS {
        bail!(
            "{} --vlan entries for {iface}; at most {LAB_VLAN_MAX_MACS}",
            args.vlans.len()
        );
    }
    for (i, (vid, mac)) in args.vlans.iter().enumerate() {
        if let Some((other, _)) = args.vlans[..i].iter().find(|(_, m)| m == mac) {
            bail!(
                "MAC {} is given twice (VLAN {other} and VLAN {vid}); one MAC is one sub-interface",
                format_mac(mac)
            );
        }
    }

    let mut ebpf = EbpfLoader::new()
        .load(LAB_VLAN_OBJECT)
        .context("loading the lab-vlan eBPF object")?;

    let mut by_mac: HashMap<_, [u8; 8], u32> = HashMap::try_from(
        ebpf.map_mut(LAB_VLAN_MAP)
            .with_context(|| format!("map {LAB_VLAN_MAP} missing from the lab-vlan object"))?,
    )?;
    for (vid, mac) in &args.vlans {
        let key = [mac[0], mac[1], mac[2], mac[3], mac[4], mac[5], 0, 0];
        by_mac
            .insert(key, u32::from(*vid), 0)
            .with_context(|| format!("inserting {} -> VLAN {vid}", format_mac(mac)))?;
    }

    // clsact may already be there (an earlier run, or someone else's
    // filters): keep it, and remove only our own filters by name.
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("adding the clsact qdisc to {iface}")),
    }
    for (name, attach_type) in [
        (LAB_VLAN_EGRESS, TcAttachType::Egress),
        (LAB_VLAN_INGRESS, TcAttachType::Ingress),
    ] {
        match tc::qdisc_detach_program(iface, attach_type, name) {
            Ok(()) => {}
            Err(TcError::IoError(e)) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("removing the previous {name} from {iface}"))
            }
        }
    }

    for (name, attach_type) in [
        (LAB_VLAN_EGRESS, TcAttachType::Egress),
        (LAB_VLAN_INGRESS, TcAttachType::Ingress),
    ] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .with_context(|| format!("program {name} missing from the lab-vlan object"))?
            .try_into()?;
        prog.load().with_context(|| format!("loading {name}"))?;
        // Netlink, not TCX: a TCX link is an fd and would detach when this
        // process exits; a netlink tc filter holds the program by itself.
        let link_id = prog
            .attach_with_options(
                iface,
                attach_type,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .with_context(|| format!("attaching {name} to {iface}"))?;
        // Dropping the link (or the program) would detach the filter.
        std::mem::forget(prog.take_link(link_id)?);
    }
    Ok(())
}

fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vid_and_mac() {
        assert_eq!(
            parse_vlan_mac("100=02:00:00:00:01:0a"),
            Ok((100, [2, 0, 0, 0, 1, 10]))
        );
        assert_eq!(
            parse_vlan_mac("4094=FF:ff:0:1:2:3"),
            Ok((4094, [0xff, 0xff, 0, 1, 2, 3]))
        );
    }

    #[test]
    fn rejects_bad_vid_or_mac() {
        for bad in [
            "0=02:00:00:00:01:01",
            "4095=02:00:00:00:01:01",
            "x=02:00:00:00:01:01",
            "100",
            "100=02:00:00:00:01",
            "100=02:00:00:00:01:01:01",
            "100=02:00:00:00:01:zz",
            "100=02:00:00:00:01:123",
        ] {
            assert!(parse_vlan_mac(bad).is_err(), "{bad} accepted");
        }
    }
}
