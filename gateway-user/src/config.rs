//! The operator's TOML configuration: parsing, validation and the validated model.
//!
//! The pipeline has three stages, each kept separate so that later options can
//! be added in one place each:
//!
//! 1. [`raw`]: serde structs mirroring the TOML text exactly, every value
//!    wrapped in [`toml::Spanned`] so that errors can name its line. Unknown
//!    keys are rejected here (`deny_unknown_fields`); a syntax or type error
//!    stops parsing and is reported with its line.
//! 2. "located" structs ([`LocatedConfig`] and friends): the raw values parsed
//!    into their types (addresses, prefixes) with the line of every value kept
//!    beside it. A value that does not parse is reported and kept as `None`,
//!    so the cross-checks of stage 3 still run on everything else.
//! 3. validation: one small function per rule over the located config, each
//!    pushing every violation it finds into [`Errors`]; then, if nothing was
//!    reported, the located config is turned into the public model
//!    ([`Config`]).
//!
//! Every error reads `FILE:LINE: <what> "<offending value>": <rule>`, one per
//! line, sorted by line.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};

// ---------------------------------------------------------------------------
// The validated model
// ---------------------------------------------------------------------------

/// A validated configuration. All `Vec`s keep file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file the config was read from (as given to [`Config::load`] or
    /// [`Config::parse`]).
    pub source: PathBuf,
    pub node: Node,
    pub connections: Vec<Connection>,
    pub gateways: Vec<Gateway>,
    pub tunnels: Vec<Tunnel>,
}

/// `[node]`: settings of this gateway node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Also names the bpffs pin folder: `[a-zA-Z0-9_.-]`, 1..=64 characters,
    /// not `.` or `..`.
    pub name: String,
    /// Where the Prometheus `/metrics` endpoint listens (`address:port`);
    /// `None` (the default) serves no metrics.
    pub metrics_address: Option<std::net::SocketAddr>,
}

/// `[[connection]]`: a physical line, i.e. one trunk port towards the IDC.
#[derive(Debug, Clone, PartialEq)]
pub struct Connection {
    pub name: String,
    /// The trunk port (802.1Q tagged) towards the customer's data center.
    pub interface: String,
    /// Line of the `[[connection]]` header.
    pub line: usize,
    /// Line of the `interface = ...` value (used by [`Config::check_interfaces`]).
    pub interface_line: usize,
}

/// `[[gateway]]`: the entry point of exactly one VPC.
#[derive(Debug, Clone, PartialEq)]
pub struct Gateway {
    pub name: String,
    pub vpc: String,
    /// Canonical, pairwise non-overlapping prefixes (also across gateways).
    pub vpc_cidrs: Vec<Ipv4Net>,
    /// The port (untagged) towards the VPC.
    pub interface: String,
    /// `[[gateway.local_ip_mapping]]`: how IDCs see this gateway's VPC
    /// addresses. Originals lie inside `vpc_cidrs` and do not overlap each
    /// other; mapped ranges are unique within the gateway (see
    /// [`Tunnel::peer_ip_mappings`]).
    pub local_ip_mappings: Vec<IpMappingCfg>,
    /// `[[gateway.local_port_mapping]]`: VPC services as IDCs see them.
    /// Unique per (protocol, mapped address) and per (protocol, original
    /// address); originals lie inside `vpc_cidrs`.
    pub local_port_mappings: Vec<PortMappingCfg>,
    /// Line of the `[[gateway]]` header.
    pub line: usize,
    /// Line of the `interface = ...` value (used by [`Config::check_interfaces`]).
    pub interface_line: usize,
}

/// `[[tunnel]]`: one VLAN on one connection, bound to one gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Tunnel {
    pub name: String,
    /// Name of a [`Connection`] defined in the same config.
    pub connection: String,
    /// 1..=4094, unique per connection.
    pub vlan: u16,
    /// Name of a [`Gateway`] defined in the same config.
    pub gateway: String,
    /// The gateway's interconnect address with its prefix, as written
    /// (e.g. `169.254.100.1/30`; not truncated to the network).
    pub local_ip: Ipv4Net,
    /// The customer's router; a usable address of `local_ip`'s subnet.
    pub peer_ip: Ipv4Addr,
    /// Customer prefixes reached over this tunnel (canonical; none lies in,
    /// or contains, the gateway's VPC CIDRs, nor equals a mapped prefix of a
    /// peer mapping on the same gateway).
    pub routes: Vec<Ipv4Net>,
    /// `[[tunnel.peer_ip_mapping]]`: how the VPC sees this tunnel's IDC
    /// addresses. Originals do not overlap within the tunnel (two tunnels may
    /// map the same original). Mapped ranges are unique within the gateway:
    /// they overlap neither the VPC CIDRs nor any other mapped range or
    /// port-mapped address of the gateway (its tunnels' peer mappings, its
    /// local IP and port mappings).
    pub peer_ip_mappings: Vec<IpMappingCfg>,
    /// Among tunnels announcing the same prefix to one gateway, traffic uses
    /// the healthy ones of the lowest priority (equal priorities share the
    /// load by flow). 0..=65535, default [`DEFAULT_PRIORITY`].
    pub priority: u16,
    /// Cap per direction in Mbit/s (whole frames, 802.1Q tag included);
    /// `None` = no cap.
    pub bandwidth_mbps: Option<u32>,
    /// `[tunnel.health]`: how the daemon probes the customer router.
    pub health: HealthCfg,
    /// Line of the `[[tunnel]]` header.
    pub line: usize,
}

pub const DEFAULT_PRIORITY: u16 = 100;

/// `[tunnel.health]`: the daemon ARPs for the tunnel's `peer_ip` every
/// `interval_ms`; `down_after` unanswered probes in a row mark the tunnel
/// down, `up_after` answered ones in a row mark it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCfg {
    pub interval_ms: u32,
    pub down_after: u32,
    pub up_after: u32,
}

impl Default for HealthCfg {
    fn default() -> Self {
        Self {
            interval_ms: 200,
            down_after: 3,
            up_after: 3,
        }
    }
}

pub const BANDWIDTH_MBPS_MAX: i64 = 400_000;
pub const HEALTH_INTERVAL_MS: (i64, i64) = (10, 60_000);
pub const HEALTH_COUNT_MAX: i64 = 100;

/// A stateless 1:1 address translation: a host (`/32`) or a whole prefix,
/// host bits kept. `original` and `mapped` are canonical and have the same
/// prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpMappingCfg {
    pub original: Ipv4Net,
    pub mapped: Ipv4Net,
    /// Line of the mapping's table header (or inline table).
    pub line: usize,
}

/// Transport protocol of a port mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// IP protocol number (IANA): 6 for TCP, 17 for UDP.
    pub const fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// The name as written in the config.
    pub const fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A stateless IP:port <-> IP:port translation of a VPC service
/// (`original`, inside the gateway's VPC CIDRs) to the address IDCs use
/// (`mapped`). Ports are never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMappingCfg {
    pub protocol: Protocol,
    pub original: SocketAddrV4,
    pub mapped: SocketAddrV4,
    /// Line of the mapping's table header (or inline table).
    pub line: usize,
}

impl Config {
    /// Reads and validates the config file at `path`. An I/O error is one
    /// [`ConfigError`] naming the file (with line 0).
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let mut config = Config::parse(&text, &file)?;
                config.source = path.to_path_buf();
                Ok(config)
            }
            Err(e) => Err(ConfigErrors(vec![ConfigError {
                file,
                line: 0,
                message: format!("cannot read config file: {e}"),
            }])),
        }
    }

    /// Parses and validates `text`; `file` is the name used in error messages
    /// and stored as [`Config::source`]. Reports every violation found, not
    /// just the first (a TOML syntax or type error stops at that error).
    /// Does not look at the host: see [`Config::check_interfaces`].
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigErrors> {
        let lines = LineIndex::new(text);
        let mut errors = Errors::new(file);

        let raw: raw::Config = match toml::from_str(text) {
            Ok(raw) => raw,
            Err(e) => {
                let line = e.span().map_or(1, |span| lines.line(span.start));
                errors.push_raw(line, format!("invalid TOML: {}", one_line(e.message())));
                return Err(errors.finish());
            }
        };

        let located = locate(raw, &lines, &mut errors);
        validate(&located, &mut errors);
        if !errors.is_empty() {
            return Err(errors.finish());
        }
        match located.into_model(PathBuf::from(file)) {
            Some(config) => Ok(config),
            None => {
                // Unreachable: every value that failed to parse was reported.
                errors.push_raw(
                    1,
                    "internal error: incomplete config after validation".into(),
                );
                Err(errors.finish())
            }
        }
    }

    /// Reports every configured interface (connection trunk ports and gateway
    /// VPC ports) for which `exists` returns false, each with its line.
    pub fn check_interfaces(&self, exists: impl Fn(&str) -> bool) -> Result<(), ConfigErrors> {
        let mut errors = Errors::new(&self.source.display().to_string());
        let ports = self
            .connections
            .iter()
            .map(|c| ("connection", &c.interface, c.interface_line))
            .chain(
                self.gateways
                    .iter()
                    .map(|g| ("gateway", &g.interface, g.interface_line)),
            );
        for (kind, interface, line) in ports {
            if !exists(interface) {
                errors.push(
                    line,
                    &format!("{kind} interface"),
                    interface,
                    "no such network interface on this host",
                );
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.finish())
        }
    }

    /// The connection named `name`, if any.
    pub fn connection(&self, name: &str) -> Option<&Connection> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// The gateway named `name`, if any.
    pub fn gateway(&self, name: &str) -> Option<&Gateway> {
        self.gateways.iter().find(|g| g.name == name)
    }

    /// The tunnel named `name`, if any.
    pub fn tunnel(&self, name: &str) -> Option<&Tunnel> {
        self.tunnels.iter().find(|t| t.name == name)
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem in a config file. `line` is 1-based; 0 means "no line" (the
/// file could not be read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}:{}: {}", self.file, self.line, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// All problems found in a config file, sorted by line. Displays one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl IntoIterator for ConfigErrors {
    type Item = ConfigError;
    type IntoIter = std::vec::IntoIter<ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Collects errors while parsing and validating one file.
struct Errors {
    file: String,
    list: Vec<ConfigError>,
}

impl Errors {
    fn new(file: &str) -> Self {
        Errors {
            file: file.to_string(),
            list: Vec::new(),
        }
    }

    /// Records `<what> "<value>": <rule>` at `line`. `value` is escaped so
    /// that every message stays on one line.
    fn push(&mut self, line: usize, what: &str, value: impl fmt::Display, rule: impl fmt::Display) {
        let message = format!("{what} {}: {rule}", quote(value));
        self.push_raw(line, message);
    }

    fn push_raw(&mut self, line: usize, message: String) {
        self.list.push(ConfigError {
            file: self.file.clone(),
            line,
            message,
        });
    }

    fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn finish(mut self) -> ConfigErrors {
        // Stable: errors on one line keep the order of the rules.
        self.list.sort_by_key(|e| e.line);
        ConfigErrors(self.list)
    }
}

/// `"value"`, with quotes, backslashes and control characters escaped.
fn quote(value: impl fmt::Display) -> String {
    format!("\"{}\"", value.to_string().escape_debug())
}

/// Joins a possibly multi-line message (toml's parse errors) into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Maps byte offsets of the TOML text to 1-based line numbers.
struct LineIndex {
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { starts }
    }

    fn line(&self, offset: usize) -> usize {
        // Number of line starts at or before `offset`; at least 1.
        self.starts.partition_point(|&start| start <= offset).max(1)
    }
}

// ---------------------------------------------------------------------------
// Stage 1: raw serde structs (the TOML text as written)
// ---------------------------------------------------------------------------

/// Mirrors the TOML text. New keys are added here first (as `Spanned`
/// values, `Option`/`#[serde(default)]` when optional), then to the located
/// structs and the model.
mod raw {
    use serde::Deserialize;
    use toml::Spanned;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Config {
        /// Required; `Option` so its absence is reported like any other rule.
        pub node: Option<Spanned<Node>>,
        #[serde(default)]
        pub connection: Vec<Spanned<Connection>>,
        #[serde(default)]
        pub gateway: Vec<Spanned<Gateway>>,
        #[serde(default)]
        pub tunnel: Vec<Spanned<Tunnel>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Node {
        pub name: Spanned<String>,
        #[serde(default)]
        pub metrics_address: Option<Spanned<String>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Connection {
        pub name: Spanned<String>,
        pub interface: Spanned<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Gateway {
        pub name: Spanned<String>,
        pub vpc: Spanned<String>,
        pub vpc_cidrs: Vec<Spanned<String>>,
        pub interface: Spanned<String>,
        #[serde(default)]
        pub local_ip_mapping: Vec<Spanned<IpMapping>>,
        #[serde(default)]
        pub local_port_mapping: Vec<Spanned<PortMapping>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Tunnel {
        pub name: Spanned<String>,
        pub connection: Spanned<String>,
        /// `i64` so that an out-of-range VLAN is a collected error, not a stop.
        pub vlan: Spanned<i64>,
        pub gateway: Spanned<String>,
        pub local_ip: Spanned<String>,
        pub peer_ip: Spanned<String>,
        #[serde(default)]
        pub routes: Vec<Spanned<String>>,
        #[serde(default)]
        pub peer_ip_mapping: Vec<Spanned<IpMapping>>,
        /// `i64` so that out-of-range values are collected errors.
        pub priority: Option<Spanned<i64>>,
        pub bandwidth_mbps: Option<Spanned<i64>>,
        pub health: Option<Spanned<Health>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Health {
        pub interval_ms: Option<Spanned<i64>>,
        pub down_after: Option<Spanned<i64>>,
        pub up_after: Option<Spanned<i64>>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct IpMapping {
        pub original: Spanned<String>,
        pub mapped: Spanned<String>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PortMapping {
        pub protocol: Spanned<String>,
        pub original: Spanned<String>,
        pub mapped: Spanned<String>,
    }
}

// ---------------------------------------------------------------------------
// Stage 2: located values (parsed, each with its line)
// ---------------------------------------------------------------------------

/// A value and the line it was written on.
#[derive(Debug, Clone)]
struct At<T> {
    value: T,
    line: usize,
}

#[derive(Debug)]
struct LocatedConfig {
    node: Option<LocatedNode>,
    connections: Vec<LocatedConnection>,
    gateways: Vec<LocatedGateway>,
    tunnels: Vec<LocatedTunnel>,
}

#[derive(Debug)]
struct LocatedNode {
    name: At<String>,
    metrics_address: Option<At<Option<std::net::SocketAddr>>>,
}

#[derive(Debug)]
struct LocatedConnection {
    line: usize,
    name: At<String>,
    interface: At<String>,
}

#[derive(Debug)]
struct LocatedGateway {
    line: usize,
    name: At<String>,
    vpc: At<String>,
    /// `None`: did not parse (already reported).
    vpc_cidrs: Vec<At<Option<Ipv4Net>>>,
    interface: At<String>,
    local_ip_mappings: Vec<LocatedIpMapping>,
    local_port_mappings: Vec<LocatedPortMapping>,
}

#[derive(Debug)]
struct LocatedTunnel {
    line: usize,
    name: At<String>,
    connection: At<String>,
    vlan: At<i64>,
    gateway: At<String>,
    /// `None`: did not parse (already reported).
    local_ip: At<Option<Ipv4Net>>,
    peer_ip: At<Option<Ipv4Addr>>,
    routes: Vec<At<Option<Ipv4Net>>>,
    peer_ip_mappings: Vec<LocatedIpMapping>,
    priority: Option<At<i64>>,
    bandwidth_mbps: Option<At<i64>>,
    interval_ms: Option<At<i64>>,
    down_after: Option<At<i64>>,
    up_after: Option<At<i64>>,
}

#[derive(Debug)]
struct LocatedIpMapping {
    line: usize,
    /// `None`: did not parse (already reported).
    original: At<Option<Ipv4Net>>,
    mapped: At<Option<Ipv4Net>>,
}

#[derive(Debug)]
struct LocatedPortMapping {
    line: usize,
    /// `None`: did not parse (already reported).
    protocol: At<Option<Protocol>>,
    original: At<Option<SocketAddrV4>>,
    mapped: At<Option<SocketAddrV4>>,
}

/// Stage 2: parses the raw strings, reporting values that do not parse.
fn locate(raw: raw::Config, lines: &LineIndex, errors: &mut Errors) -> LocatedConfig {
    let at = |s: toml::Spanned<String>| At {
        line: lines.line(s.span().start),
        value: s.into_inner(),
    };

    let node = raw.node.map(|n| {
        let n = n.into_inner();
        LocatedNode {
            name: at(n.name),
            metrics_address: n
                .metrics_address
                .map(|a| parse_at(at(a), "node metrics_address", parse_listen_address, errors)),
        }
    });

    let connections = raw
        .connection
        .into_iter()
        .map(|c| {
            let line = lines.line(c.span().start);
            let c = c.into_inner();
            LocatedConnection {
                line,
                name: at(c.name),
                interface: at(c.interface),
            }
        })
        .collect();

    let gateways = raw
        .gateway
        .into_iter()
        .map(|g| {
            let line = lines.line(g.span().start);
            let g = g.into_inner();
            let vpc_cidrs = g
                .vpc_cidrs
                .into_iter()
                .map(|s| parse_at(at(s), "gateway vpc_cidrs", parse_prefix, errors))
                .collect();
            let local_ip_mappings = g
                .local_ip_mapping
                .into_iter()
                .map(|m| {
                    let line = lines.line(m.span().start);
                    let m = m.into_inner();
                    LocatedIpMapping {
                        line,
                        original: parse_at(
                            at(m.original),
                            "gateway local_ip_mapping original",
                            parse_mapping_prefix,
                            errors,
                        ),
                        mapped: parse_at(
                            at(m.mapped),
                            "gateway local_ip_mapping mapped",
                            parse_mapping_prefix,
                            errors,
                        ),
                    }
                })
                .collect();
            let local_port_mappings = g
                .local_port_mapping
                .into_iter()
                .map(|m| {
                    let line = lines.line(m.span().start);
                    let m = m.into_inner();
                    LocatedPortMapping {
                        line,
                        protocol: parse_at(
                            at(m.protocol),
                            "gateway local_port_mapping protocol",
                            parse_protocol,
                            errors,
                        ),
                        original: parse_at(
                            at(m.original),
                            "gateway local_port_mapping original",
                            parse_service_address,
                            errors,
                        ),
                        mapped: parse_at(
                            at(m.mapped),
                            "gateway local_port_mapping mapped",
                            parse_service_address,
                            errors,
                        ),
                    }
                })
                .collect();
            LocatedGateway {
                line,
                name: at(g.name),
                vpc: at(g.vpc),
                vpc_cidrs,
                interface: at(g.interface),
                local_ip_mappings,
                local_port_mappings,
            }
        })
        .collect();

    let tunnels = raw
        .tunnel
        .into_iter()
        .map(|t| {
            let line = lines.line(t.span().start);
            let t = t.into_inner();
            let routes = t
                .routes
                .into_iter()
                .map(|s| parse_at(at(s), "tunnel routes", parse_prefix, errors))
                .collect();
            let peer_ip_mappings = t
                .peer_ip_mapping
                .into_iter()
                .map(|m| {
                    let line = lines.line(m.span().start);
                    let m = m.into_inner();
                    LocatedIpMapping {
                        line,
                        original: parse_at(
                            at(m.original),
                            "tunnel peer_ip_mapping original",
                            parse_mapping_prefix,
                            errors,
                        ),
                        mapped: parse_at(
                            at(m.mapped),
                            "tunnel peer_ip_mapping mapped",
                            parse_mapping_prefix,
                            errors,
                        ),
                    }
                })
                .collect();
            let num = |v: Option<toml::Spanned<i64>>| {
                v.map(|v| At {
                    line: lines.line(v.span().start),
                    value: v.into_inner(),
                })
            };
            let health = t.health.map(|h| h.into_inner());
            let (interval_ms, down_after, up_after) = match health {
                Some(h) => (num(h.interval_ms), num(h.down_after), num(h.up_after)),
                None => (None, None, None),
            };
            LocatedTunnel {
                priority: num(t.priority),
                bandwidth_mbps: num(t.bandwidth_mbps),
                interval_ms,
                down_after,
                up_after,
                line,
                name: at(t.name),
                connection: at(t.connection),
                vlan: At {
                    line: lines.line(t.vlan.span().start),
                    value: t.vlan.into_inner(),
                },
                gateway: at(t.gateway),
                local_ip: parse_at(
                    at(t.local_ip),
                    "tunnel local_ip",
                    parse_interface_address,
                    errors,
                ),
                peer_ip: parse_at(at(t.peer_ip), "tunnel peer_ip", parse_address, errors),
                routes,
                peer_ip_mappings,
            }
        })
        .collect();

    LocatedConfig {
        node,
        connections,
        gateways,
        tunnels,
    }
}

/// Parses one located string, reporting `<what> "<text>": <why>` on failure.
fn parse_at<T>(
    s: At<String>,
    what: &str,
    parse: fn(&str) -> Result<T, String>,
    errors: &mut Errors,
) -> At<Option<T>> {
    let value = match parse(&s.value) {
        Ok(v) => Some(v),
        Err(why) => {
            errors.push(s.line, what, &s.value, why);
            None
        }
    };
    At {
        value,
        line: s.line,
    }
}

/// A TCP listen address, IPv4 or IPv6 (`127.0.0.1:9469`, `[::1]:9469`).
fn parse_listen_address(s: &str) -> Result<std::net::SocketAddr, String> {
    match s.parse::<std::net::SocketAddr>() {
        Ok(a) if a.port() == 0 => Err("port must be 1..=65535".into()),
        Ok(a) => Ok(a),
        Err(_) => Err("not an address:port to listen on, e.g. \"127.0.0.1:9469\"".into()),
    }
}

/// An IPv4 address with prefix length, host bits allowed (`169.254.100.1/30`).
fn parse_interface_address(s: &str) -> Result<Ipv4Net, String> {
    match s.trim().parse::<IpNet>() {
        Ok(IpNet::V4(net)) => Ok(net),
        Ok(IpNet::V6(_)) => {
            Err("IPv6 is not supported yet; use an IPv4 address with prefix length".into())
        }
        Err(_) => match s.trim().parse::<IpAddr>() {
            Ok(IpAddr::V6(_)) => {
                Err("IPv6 is not supported yet; use an IPv4 address with prefix length".into())
            }
            Ok(IpAddr::V4(_)) => {
                Err("missing prefix length; write address/prefix, e.g. 169.254.100.1/30".into())
            }
            Err(_) => {
                Err("not an IPv4 address with prefix length (a.b.c.d/len, len 0..=32)".into())
            }
        },
    }
}

/// A canonical IPv4 network prefix (`10.0.0.0/16`, no host bits set).
fn parse_prefix(s: &str) -> Result<Ipv4Net, String> {
    let net = match s.trim().parse::<IpNet>() {
        Ok(IpNet::V4(net)) => net,
        Ok(IpNet::V6(_)) => return Err("IPv6 is not supported yet; use an IPv4 prefix".into()),
        Err(_) => {
            return Err(match s.trim().parse::<IpAddr>() {
                Ok(IpAddr::V6(_)) => "IPv6 is not supported yet; use an IPv4 prefix".into(),
                Ok(IpAddr::V4(a)) => {
                    format!("missing prefix length; for a single host write \"{a}/32\"")
                }
                Err(_) => "not an IPv4 prefix (a.b.c.d/len, len 0..=32)".into(),
            })
        }
    };
    if net != net.trunc() {
        return Err(format!(
            "not a network prefix (host bits set); did you mean \"{}\"?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A plain IPv4 address (no prefix length).
fn parse_address(s: &str) -> Result<Ipv4Addr, String> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(a),
        Ok(IpAddr::V6(_)) => Err("IPv6 is not supported yet; use an IPv4 address".into()),
        Err(_) if s.parse::<IpNet>().is_ok() => {
            Err("must be a plain address, without prefix length".into())
        }
        Err(_) => Err("not an IPv4 address (a.b.c.d)".into()),
    }
}

/// One side of an IP mapping: a host (`10.0.0.5`, read as `/32`) or a
/// canonical prefix (`10.0.0.0/24`).
fn parse_mapping_prefix(s: &str) -> Result<Ipv4Net, String> {
    match s.trim().parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => Ok(Ipv4Net::from(a)),
        Ok(IpAddr::V6(_)) => Err("IPv6 is not supported yet; use an IPv4 address or prefix".into()),
        Err(_) => parse_prefix(s).map_err(|why| {
            if why.starts_with("not an IPv4 prefix") {
                "not an IPv4 address or prefix (a.b.c.d or a.b.c.d/len, len 0..=32)".into()
            } else {
                why
            }
        }),
    }
}

/// `tcp` or `udp`.
fn parse_protocol(s: &str) -> Result<Protocol, String> {
    match s {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        _ => Err("unsupported protocol; port mappings are \"tcp\" or \"udp\"".into()),
    }
}

/// An IPv4 address and a port 1..=65535 (`172.16.0.10:80`).
fn parse_service_address(s: &str) -> Result<SocketAddrV4, String> {
    let s = s.trim();
    match s.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(a)) if a.port() == 0 => {
            Err("port 0 is not a usable port; ports are 1..=65535".into())
        }
        Ok(SocketAddr::V4(a)) => Ok(a),
        Ok(SocketAddr::V6(_)) => {
            Err("IPv6 is not supported yet; use an IPv4 address and port".into())
        }
        Err(_) => Err(match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => format!("missing port; write address:port, e.g. \"{a}:80\""),
            Ok(IpAddr::V6(_)) => "IPv6 is not supported yet; use an IPv4 address and port".into(),
            Err(_) => "not an IPv4 address and port (a.b.c.d:port, port 1..=65535)".into(),
        }),
    }
}

impl LocatedConfig {
    /// Stage 3b: the public model. `None` only if a value failed to parse,
    /// which has been reported already.
    fn into_model(self, source: PathBuf) -> Option<Config> {
        let node = self.node?;
        let node = Node {
            name: node.name.value,
            metrics_address: match node.metrics_address {
                Some(a) => Some(a.value?),
                None => None,
            },
        };
        let connections = self
            .connections
            .into_iter()
            .map(|c| Connection {
                name: c.name.value,
                interface: c.interface.value,
                line: c.line,
                interface_line: c.interface.line,
            })
            .collect();
        let gateways = self
            .gateways
            .into_iter()
            .map(|g| {
                Some(Gateway {
                    name: g.name.value,
                    vpc: g.vpc.value,
                    vpc_cidrs: g
                        .vpc_cidrs
                        .into_iter()
                        .map(|c| c.value)
                        .collect::<Option<_>>()?,
                    interface: g.interface.value,
                    local_ip_mappings: g
                        .local_ip_mappings
                        .into_iter()
                        .map(LocatedIpMapping::into_model)
                        .collect::<Option<_>>()?,
                    local_port_mappings: g
                        .local_port_mappings
                        .into_iter()
                        .map(LocatedPortMapping::into_model)
                        .collect::<Option<_>>()?,
                    line: g.line,
                    interface_line: g.interface.line,
                })
            })
            .collect::<Option<_>>()?;
        let tunnels = self
            .tunnels
            .into_iter()
            .map(|t| {
                Some(Tunnel {
                    name: t.name.value,
                    connection: t.connection.value,
                    vlan: u16::try_from(t.vlan.value).ok()?,
                    gateway: t.gateway.value,
                    local_ip: t.local_ip.value?,
                    peer_ip: t.peer_ip.value?,
                    routes: t
                        .routes
                        .into_iter()
                        .map(|r| r.value)
                        .collect::<Option<_>>()?,
                    peer_ip_mappings: t
                        .peer_ip_mappings
                        .into_iter()
                        .map(LocatedIpMapping::into_model)
                        .collect::<Option<_>>()?,
                    priority: match &t.priority {
                        Some(p) => u16::try_from(p.value).ok()?,
                        None => DEFAULT_PRIORITY,
                    },
                    bandwidth_mbps: match &t.bandwidth_mbps {
                        Some(b) => Some(u32::try_from(b.value).ok()?),
                        None => None,
                    },
                    health: {
                        let d = HealthCfg::default();
                        let get = |v: &Option<At<i64>>, default: u32| match v {
                            Some(v) => u32::try_from(v.value).ok(),
                            None => Some(default),
                        };
                        HealthCfg {
                            interval_ms: get(&t.interval_ms, d.interval_ms)?,
                            down_after: get(&t.down_after, d.down_after)?,
                            up_after: get(&t.up_after, d.up_after)?,
                        }
                    },
                    line: t.line,
                })
            })
            .collect::<Option<_>>()?;
        Some(Config {
            source,
            node,
            connections,
            gateways,
            tunnels,
        })
    }
}

impl LocatedIpMapping {
    fn into_model(self) -> Option<IpMappingCfg> {
        Some(IpMappingCfg {
            original: self.original.value?,
            mapped: self.mapped.value?,
            line: self.line,
        })
    }
}

impl LocatedPortMapping {
    fn into_model(self) -> Option<PortMappingCfg> {
        Some(PortMappingCfg {
            protocol: self.protocol.value?,
            original: self.original.value?,
            mapped: self.mapped.value?,
            line: self.line,
        })
    }
}

// ---------------------------------------------------------------------------
// Stage 3: validation, one function per rule
// ---------------------------------------------------------------------------

fn validate(c: &LocatedConfig, errors: &mut Errors) {
    check_node(c, errors);
    check_names(c, errors);
    check_interface_names(c, errors);
    check_interface_roles(c, errors);
    check_references(c, errors);
    check_vlans(c, errors);
    check_one_gateway_per_vpc(c, errors);
    check_vpc_cidrs_overlap(c, errors);
    check_routes_outside_vpc(c, errors);
    check_tunnel_addresses(c, errors);
    check_mapping_prefix_lengths(c, errors);
    check_mapping_originals_overlap(c, errors);
    check_local_originals_in_vpc(c, errors);
    check_mapped_addresses_unique(c, errors);
    check_routes_not_mapped(c, errors);
    check_port_mappings_unique(c, errors);
    check_tunnel_lines(c, errors);
}

/// Priority, bandwidth cap and health probe settings are in range.
fn check_tunnel_lines(c: &LocatedConfig, errors: &mut Errors) {
    let range = |v: &Option<At<i64>>, what: &str, lo: i64, hi: i64, why: &str, e: &mut Errors| {
        if let Some(v) = v {
            if !(lo..=hi).contains(&v.value) {
                e.push(
                    v.line,
                    what,
                    v.value,
                    format!("must be in {lo}..={hi}{why}"),
                );
            }
        }
    };
    for t in &c.tunnels {
        range(
            &t.priority,
            "tunnel priority",
            0,
            u16::MAX as i64,
            " (lower wins)",
            errors,
        );
        range(
            &t.bandwidth_mbps,
            "tunnel bandwidth_mbps",
            1,
            BANDWIDTH_MBPS_MAX,
            " Mbit/s; leave it out for no cap",
            errors,
        );
        range(
            &t.interval_ms,
            "tunnel health interval_ms",
            HEALTH_INTERVAL_MS.0,
            HEALTH_INTERVAL_MS.1,
            "",
            errors,
        );
        for (v, what) in [
            (&t.down_after, "tunnel health down_after"),
            (&t.up_after, "tunnel health up_after"),
        ] {
            range(v, what, 1, HEALTH_COUNT_MAX, " probes", errors);
        }
    }
}

pub const NODE_NAME_MAX: usize = 64;
/// IFNAMSIZ (16) minus the terminating NUL.
pub const INTERFACE_NAME_MAX: usize = 15;
pub const VLAN_MIN: i64 = 1;
pub const VLAN_MAX: i64 = 4094;

/// `[node]` is required; its name names the bpffs pin folder.
fn check_node(c: &LocatedConfig, errors: &mut Errors) {
    let Some(node) = &c.node else {
        errors.push(
            1,
            "table",
            "[node]",
            "missing; every config needs a [node] table with a name",
        );
        return;
    };
    let name = &node.name.value;
    let charset_ok = name
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'));
    if name.is_empty() || name.len() > NODE_NAME_MAX || !charset_ok || name == "." || name == ".." {
        errors.push(
            node.name.line,
            "node name",
            name,
            format!("must be 1..={NODE_NAME_MAX} characters from [a-zA-Z0-9_.-], and not . or .. (it names the bpffs pin folder)"),
        );
    }
}

/// Names are non-empty and unique within their kind.
fn check_names(c: &LocatedConfig, errors: &mut Errors) {
    let kinds: [(&str, Vec<&At<String>>); 3] = [
        (
            "connection",
            c.connections.iter().map(|x| &x.name).collect(),
        ),
        ("gateway", c.gateways.iter().map(|x| &x.name).collect()),
        ("tunnel", c.tunnels.iter().map(|x| &x.name).collect()),
    ];
    for (kind, names) in kinds {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for name in names {
            if name.value.is_empty() {
                errors.push(
                    name.line,
                    &format!("{kind} name"),
                    "",
                    format!("{kind} names must not be empty"),
                );
                continue;
            }
            if let Some(first) = seen.get(name.value.as_str()) {
                errors.push(
                    name.line,
                    &format!("{kind} name"),
                    &name.value,
                    format!(
                        "duplicate, already defined at line {first}; {kind} names must be unique"
                    ),
                );
            } else {
                seen.insert(&name.value, name.line);
            }
        }
    }
}

/// Every interface used by the config, with the role it plays.
fn interfaces(c: &LocatedConfig) -> impl Iterator<Item = (&'static str, &At<String>, &At<String>)> {
    c.connections
        .iter()
        .map(|x| ("connection", &x.name, &x.interface))
        .chain(
            c.gateways
                .iter()
                .map(|x| ("gateway", &x.name, &x.interface)),
        )
}

/// Interface names as Linux accepts them (dev_valid_name).
fn check_interface_names(c: &LocatedConfig, errors: &mut Errors) {
    for (kind, _, interface) in interfaces(c) {
        let name = &interface.value;
        let valid = !name.is_empty()
            && name.len() <= INTERFACE_NAME_MAX
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|ch| ch == '/' || ch == ':' || ch.is_whitespace());
        if !valid {
            errors.push(
                interface.line,
                &format!("{kind} interface"),
                name,
                format!("not a valid interface name; must be 1..={INTERFACE_NAME_MAX} bytes (IFNAMSIZ) without '/', ':' or whitespace, and not . or .."),
            );
        }
    }
}

/// An interface serves one role: one connection's trunk port or one
/// gateway's VPC port.
fn check_interface_roles(c: &LocatedConfig, errors: &mut Errors) {
    let mut seen: HashMap<&str, (&str, &At<String>)> = HashMap::new();
    for (kind, name, interface) in interfaces(c) {
        if interface.value.is_empty() {
            continue; // reported by check_interface_names
        }
        if let Some((first_kind, first_name)) = seen.get(interface.value.as_str()) {
            let role = if *first_kind == "connection" {
                "trunk port"
            } else {
                "VPC port"
            };
            errors.push(
                interface.line,
                &format!("{kind} interface"),
                &interface.value,
                format!(
                    "already the {role} of {first_kind} {} (line {}); an interface may serve only one connection or gateway",
                    quote(&first_name.value),
                    first_name.line
                ),
            );
        } else {
            seen.insert(&interface.value, (kind, name));
        }
    }
}

/// Tunnels refer to defined connections and gateways.
fn check_references(c: &LocatedConfig, errors: &mut Errors) {
    for t in &c.tunnels {
        if !c
            .connections
            .iter()
            .any(|x| x.name.value == t.connection.value)
        {
            errors.push(
                t.connection.line,
                "tunnel connection",
                &t.connection.value,
                "undefined; no [[connection]] has this name",
            );
        }
        if !c.gateways.iter().any(|x| x.name.value == t.gateway.value) {
            errors.push(
                t.gateway.line,
                "tunnel gateway",
                &t.gateway.value,
                "undefined; no [[gateway]] has this name",
            );
        }
    }
}

/// VLAN IDs are 1..=4094 and carry at most one tunnel per connection.
fn check_vlans(c: &LocatedConfig, errors: &mut Errors) {
    let mut seen: HashMap<(&str, i64), &LocatedTunnel> = HashMap::new();
    for t in &c.tunnels {
        let vlan = t.vlan.value;
        if !(VLAN_MIN..=VLAN_MAX).contains(&vlan) {
            errors.push(
                t.vlan.line,
                "tunnel vlan",
                vlan,
                format!("out of range; VLAN IDs must be in {VLAN_MIN}..={VLAN_MAX}"),
            );
            continue;
        }
        if let Some(first) = seen.get(&(t.connection.value.as_str(), vlan)) {
            errors.push(
                t.vlan.line,
                "tunnel vlan",
                vlan,
                format!(
                    "already used on connection {} by tunnel {} (line {}); a VLAN may carry only one tunnel per connection",
                    quote(&t.connection.value),
                    quote(&first.name.value),
                    first.vlan.line
                ),
            );
        } else {
            seen.insert((&t.connection.value, vlan), t);
        }
    }
}

/// At most one gateway per VPC.
fn check_one_gateway_per_vpc(c: &LocatedConfig, errors: &mut Errors) {
    let mut seen: HashMap<&str, &LocatedGateway> = HashMap::new();
    for g in &c.gateways {
        if let Some(first) = seen.get(g.vpc.value.as_str()) {
            errors.push(
                g.vpc.line,
                "gateway vpc",
                &g.vpc.value,
                format!(
                    "already served by gateway {} (line {}); at most one gateway per VPC",
                    quote(&first.name.value),
                    first.vpc.line
                ),
            );
        } else {
            seen.insert(&g.vpc.value, g);
        }
    }
}

fn overlaps(a: &Ipv4Net, b: &Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// VPC CIDRs do not overlap, within one gateway or across gateways.
fn check_vpc_cidrs_overlap(c: &LocatedConfig, errors: &mut Errors) {
    let mut earlier: Vec<(&LocatedGateway, Ipv4Net, usize)> = Vec::new();
    for g in &c.gateways {
        for cidr in &g.vpc_cidrs {
            let Some(net) = cidr.value else { continue };
            if let Some((first_gw, first, first_line)) =
                earlier.iter().find(|(_, other, _)| overlaps(&net, other))
            {
                let whose = if std::ptr::eq(*first_gw, g) {
                    "of the same gateway".to_string()
                } else {
                    format!("of gateway {}", quote(&first_gw.name.value))
                };
                errors.push(
                    cidr.line,
                    "gateway vpc_cidrs",
                    net,
                    format!(
                        "overlaps {first} {whose} (line {first_line}); VPC CIDRs may not overlap"
                    ),
                );
            }
            earlier.push((g, net, cidr.line));
        }
    }
}

/// A tunnel route's destination may not lie in its gateway's VPC, nor
/// contain any of the VPC's CIDRs.
fn check_routes_outside_vpc(c: &LocatedConfig, errors: &mut Errors) {
    for t in &c.tunnels {
        let Some(g) = c.gateways.iter().find(|g| g.name.value == t.gateway.value) else {
            continue; // reported by check_references
        };
        for route in &t.routes {
            let Some(net) = route.value else { continue };
            for cidr in g.vpc_cidrs.iter().filter_map(|c| c.value) {
                let relation = if cidr.contains(&net) {
                    "lies inside"
                } else if net.contains(&cidr) {
                    "contains"
                } else {
                    continue;
                };
                errors.push(
                    route.line,
                    "tunnel routes",
                    net,
                    format!(
                        "{relation} VPC CIDR {cidr} of gateway {} (line {}); a route's destination may not lie in the VPC nor contain it",
                        quote(&g.name.value),
                        g.line
                    ),
                );
                break;
            }
        }
    }
}

/// local_ip leaves room for a peer (prefix <= 31); both addresses are
/// distinct usable hosts of local_ip's subnet (network and broadcast
/// addresses are not usable unless the prefix is /31).
fn check_tunnel_addresses(c: &LocatedConfig, errors: &mut Errors) {
    for t in &c.tunnels {
        let Some(local) = t.local_ip.value else {
            continue;
        };
        if local.prefix_len() > 31 {
            errors.push(
                t.local_ip.line,
                "tunnel local_ip",
                local,
                "prefix must be /31 or shorter, to leave room for peer_ip in the same subnet",
            );
            continue;
        }
        let subnet = local.trunc();
        let edge = |addr: Ipv4Addr| -> Option<&'static str> {
            if local.prefix_len() > 30 {
                None
            } else if addr == local.network() {
                Some("network")
            } else if addr == local.broadcast() {
                Some("broadcast")
            } else {
                None
            }
        };
        if let Some(which) = edge(local.addr()) {
            errors.push(
                t.local_ip.line,
                "tunnel local_ip",
                local,
                format!("is the {which} address of {subnet}; use a usable host address (or a /31)"),
            );
        }
        let Some(peer) = t.peer_ip.value else {
            continue;
        };
        if !local.contains(&peer) {
            errors.push(
                t.peer_ip.line,
                "tunnel peer_ip",
                peer,
                format!("outside local_ip's subnet {subnet} (local_ip {local}); the peer must be in the same subnet"),
            );
        } else if peer == local.addr() {
            errors.push(
                t.peer_ip.line,
                "tunnel peer_ip",
                peer,
                format!("equals local_ip ({local}); the peer needs its own address"),
            );
        } else if let Some(which) = edge(peer) {
            errors.push(
                t.peer_ip.line,
                "tunnel peer_ip",
                peer,
                format!("is the {which} address of local_ip's subnet {subnet}; use a usable host address (or a /31)"),
            );
        }
    }
}

// NAT mappings. Configs may hold 100,000 mappings, so these checks sort or
// hash instead of comparing all pairs.

/// Every IP mapping of the config, with its owner's kind ("tunnel
/// peer_ip_mapping" / "gateway local_ip_mapping").
fn ip_mappings(c: &LocatedConfig) -> impl Iterator<Item = (&'static str, &LocatedIpMapping)> {
    c.tunnels
        .iter()
        .flat_map(|t| {
            t.peer_ip_mappings
                .iter()
                .map(|m| ("tunnel peer_ip_mapping", m))
        })
        .chain(c.gateways.iter().flat_map(|g| {
            g.local_ip_mappings
                .iter()
                .map(|m| ("gateway local_ip_mapping", m))
        }))
}

/// Original and mapped side have the same prefix length (the translation
/// is 1:1, host bits kept).
fn check_mapping_prefix_lengths(c: &LocatedConfig, errors: &mut Errors) {
    for (kind, m) in ip_mappings(c) {
        let (Some(original), Some(mapped)) = (m.original.value, m.mapped.value) else {
            continue;
        };
        if original.prefix_len() != mapped.prefix_len() {
            errors.push(
                m.mapped.line,
                &format!("{kind} mapped"),
                mapped,
                format!(
                    "prefix length /{} differs from original {original} (line {}); a mapping translates 1:1, so both sides need the same prefix length",
                    mapped.prefix_len(),
                    m.original.line
                ),
            );
        }
    }
}

/// First and last address of a prefix, as integers.
fn span(net: &Ipv4Net) -> (u32, u32) {
    (u32::from(net.network()), u32::from(net.broadcast()))
}

/// Overlapping pairs among `spans` (first and last address, inclusive),
/// in O(n log n): sorted by start (wider first on equal starts, then by
/// `rank`), each span is compared with the earlier one reaching furthest,
/// which overlaps it if any earlier span does. Every span that overlaps
/// another appears in at least one pair `(earlier, later)` (in sort
/// order), though not every overlapping pair is listed. Pairs for which
/// `allowed` returns true are left out.
fn overlapping_pairs(
    spans: &[(u32, u32)],
    rank: impl Fn(usize) -> u8,
    allowed: impl Fn(usize, usize) -> bool,
) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| (spans[i].0, std::cmp::Reverse(spans[i].1), rank(i)));
    let mut pairs = Vec::new();
    let mut furthest: Option<usize> = None;
    for i in order {
        match furthest {
            Some(f) if spans[f].1 >= spans[i].0 => {
                if !allowed(f, i) {
                    pairs.push((f, i));
                }
                if spans[i].1 > spans[f].1 {
                    furthest = Some(i);
                }
            }
            _ => furthest = Some(i),
        }
    }
    pairs
}

/// Within one tunnel's peer mappings, and within one gateway's local IP
/// mappings, the originals do not overlap: an address has one translation.
/// (Two tunnels may map the same original: that is what NAT is for.)
fn check_mapping_originals_overlap(c: &LocatedConfig, errors: &mut Errors) {
    let owners = c
        .tunnels
        .iter()
        .map(|t| ("tunnel", "peer_ip_mapping", &t.peer_ip_mappings))
        .chain(
            c.gateways
                .iter()
                .map(|g| ("gateway", "local_ip_mapping", &g.local_ip_mappings)),
        );
    for (owner, section, mappings) in owners {
        let originals: Vec<(Ipv4Net, usize)> = mappings
            .iter()
            .filter_map(|m| Some((m.original.value?, m.original.line)))
            .collect();
        let spans: Vec<_> = originals.iter().map(|(net, _)| span(net)).collect();
        let mut reported = HashSet::new();
        for (a, b) in overlapping_pairs(&spans, |_| 0, |_, _| false) {
            // Reported on the later line, naming the earlier one.
            let (subject, other) = if originals[a].1 > originals[b].1 {
                (a, b)
            } else {
                (b, a)
            };
            if !reported.insert(subject) {
                continue;
            }
            let (net, line) = originals[subject];
            let (other_net, other_line) = originals[other];
            errors.push(
                line,
                &format!("{owner} {section} original"),
                net,
                format!(
                    "overlaps original {other_net} of the same {owner} (line {other_line}); the originals of one {owner}'s {section}s may not overlap"
                ),
            );
        }
    }
}

/// The VPC CIDRs of a gateway, or `None` if one of them did not parse
/// (reported already; checks against the VPC are then skipped rather
/// than reporting follow-on errors).
fn parsed_vpc_cidrs(g: &LocatedGateway) -> Option<Vec<Ipv4Net>> {
    g.vpc_cidrs.iter().map(|c| c.value).collect()
}

/// Local IP and port mappings translate the gateway's own VPC addresses:
/// their originals lie inside one of its VPC CIDRs.
fn check_local_originals_in_vpc(c: &LocatedConfig, errors: &mut Errors) {
    for g in &c.gateways {
        let Some(cidrs) = parsed_vpc_cidrs(g) else {
            continue;
        };
        let listed = || {
            cidrs
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        for m in &g.local_ip_mappings {
            let Some(original) = m.original.value else {
                continue;
            };
            if !cidrs.iter().any(|cidr| cidr.contains(&original)) {
                errors.push(
                    m.original.line,
                    "gateway local_ip_mapping original",
                    original,
                    format!(
                        "outside the VPC CIDRs of gateway {} ({}); a local_ip_mapping maps the VPC's own addresses",
                        quote(&g.name.value),
                        listed()
                    ),
                );
            }
        }
        for m in &g.local_port_mappings {
            let Some(original) = m.original.value else {
                continue;
            };
            if !cidrs.iter().any(|cidr| cidr.contains(original.ip())) {
                errors.push(
                    m.original.line,
                    "gateway local_port_mapping original",
                    original,
                    format!(
                        "address outside the VPC CIDRs of gateway {} ({}); a local_port_mapping maps a service in the VPC",
                        quote(&g.name.value),
                        listed()
                    ),
                );
            }
        }
    }
}

/// The tunnels of each gateway, by gateway name (the first gateway of a
/// duplicated name; duplicates are reported by check_names).
fn tunnels_by_gateway(c: &LocatedConfig) -> HashMap<&str, Vec<&LocatedTunnel>> {
    let mut by: HashMap<&str, Vec<&LocatedTunnel>> = HashMap::new();
    for t in &c.tunnels {
        by.entry(t.gateway.value.as_str()).or_default().push(t);
    }
    by
}

/// Where a gateway-visible address range comes from.
#[derive(Clone, Copy)]
enum MappedSource<'a> {
    VpcCidr,
    Peer(&'a LocatedTunnel),
    Local,
    Port(SocketAddrV4),
}

/// Within a gateway, every mapped address is unambiguous: the mapped
/// ranges of its tunnels' peer mappings, of its local IP mappings and the
/// addresses of its port mappings overlap neither each other nor the VPC
/// CIDRs. (Port mappings may share one mapped address on different ports;
/// their uniqueness is check_port_mappings_unique's.)
fn check_mapped_addresses_unique(c: &LocatedConfig, errors: &mut Errors) {
    let tunnels = tunnels_by_gateway(c);
    let mut seen_gateways = HashSet::new();
    for g in &c.gateways {
        let mut items: Vec<(MappedSource, Ipv4Net, usize)> = Vec::new();
        items.extend(
            g.vpc_cidrs
                .iter()
                .filter_map(|c| Some((MappedSource::VpcCidr, c.value?, c.line))),
        );
        if seen_gateways.insert(g.name.value.as_str()) {
            for t in tunnels.get(g.name.value.as_str()).into_iter().flatten() {
                items.extend(
                    t.peer_ip_mappings.iter().filter_map(|m| {
                        Some((MappedSource::Peer(t), m.mapped.value?, m.mapped.line))
                    }),
                );
            }
        }
        items.extend(
            g.local_ip_mappings
                .iter()
                .filter_map(|m| Some((MappedSource::Local, m.mapped.value?, m.mapped.line))),
        );
        items.extend(g.local_port_mappings.iter().filter_map(|m| {
            let a = m.mapped.value?;
            Some((MappedSource::Port(a), Ipv4Net::from(*a.ip()), m.mapped.line))
        }));

        let spans: Vec<_> = items.iter().map(|(_, net, _)| span(net)).collect();
        // Port addresses last among equal spans, so a host mapping of the
        // same address is the one they are compared with.
        let rank = |i: usize| u8::from(matches!(items[i].0, MappedSource::Port(_)));
        let allowed = |a: usize, b: usize| {
            matches!(
                (items[a].0, items[b].0),
                (MappedSource::VpcCidr, MappedSource::VpcCidr) // check_vpc_cidrs_overlap's
                    | (MappedSource::Port(_), MappedSource::Port(_))
            )
        };
        let mut reported = HashSet::new();
        for (a, b) in overlapping_pairs(&spans, rank, allowed) {
            // Reported on the mapping (never on a VPC CIDR), else on the
            // later line, naming the other.
            let (subject, other) = match (items[a].0, items[b].0) {
                (MappedSource::VpcCidr, _) => (b, a),
                (_, MappedSource::VpcCidr) => (a, b),
                _ if items[a].2 > items[b].2 => (a, b),
                _ => (b, a),
            };
            if !reported.insert(subject) {
                continue;
            }
            let (source, net, line) = items[subject];
            let (other_source, other_net, other_line) = items[other];
            let other = match other_source {
                MappedSource::VpcCidr => format!("VPC CIDR {other_net} (line {other_line})"),
                MappedSource::Peer(t) => format!(
                    "mapped range {other_net} of tunnel {}'s peer_ip_mapping (line {other_line})",
                    quote(&t.name.value)
                ),
                MappedSource::Local => {
                    format!("mapped range {other_net} of a local_ip_mapping (line {other_line})")
                }
                MappedSource::Port(a) => {
                    format!("mapped address {a} of a local_port_mapping (line {other_line})")
                }
            };
            let rule = format!(
                "overlaps {other} of gateway {}; a gateway's mapped addresses (its tunnels' peer_ip_mappings, its local_ip_mappings and local_port_mappings) may not overlap each other nor its VPC CIDRs",
                quote(&g.name.value)
            );
            match source {
                MappedSource::Peer(_) => {
                    errors.push(line, "tunnel peer_ip_mapping mapped", net, rule)
                }
                MappedSource::Local => {
                    errors.push(line, "gateway local_ip_mapping mapped", net, rule)
                }
                MappedSource::Port(a) => {
                    errors.push(line, "gateway local_port_mapping mapped", a, rule)
                }
                MappedSource::VpcCidr => {} // never a subject
            }
        }
    }
}

/// A peer mapping's mapped prefix is a route of its gateway (back through
/// the mapping's tunnel), so no tunnel may announce that same prefix as a
/// route. (Overlapping, more or less specific routes are fine.)
fn check_routes_not_mapped(c: &LocatedConfig, errors: &mut Errors) {
    for (gateway, tunnels) in tunnels_by_gateway(c) {
        let mut mapped: HashMap<Ipv4Net, (&LocatedTunnel, usize)> = HashMap::new();
        for t in &tunnels {
            for m in &t.peer_ip_mappings {
                if let Some(net) = m.mapped.value {
                    mapped.entry(net).or_insert((t, m.mapped.line));
                }
            }
        }
        if mapped.is_empty() {
            continue;
        }
        for t in &tunnels {
            for route in &t.routes {
                let Some(net) = route.value else { continue };
                if let Some((owner, line)) = mapped.get(&net) {
                    errors.push(
                        route.line,
                        "tunnel routes",
                        net,
                        format!(
                            "is the mapped prefix of tunnel {}'s peer_ip_mapping (line {line}) on gateway {}; that prefix already routes back through tunnel {}",
                            quote(&owner.name.value),
                            quote(gateway),
                            quote(&owner.name.value)
                        ),
                    );
                }
            }
        }
    }
}

/// Port mappings translate both ways, so within a gateway each (protocol,
/// mapped address, port) and each (protocol, original address, port)
/// occurs once.
fn check_port_mappings_unique(c: &LocatedConfig, errors: &mut Errors) {
    for g in &c.gateways {
        let mut mapped: HashMap<(Protocol, SocketAddrV4), usize> = HashMap::new();
        let mut original: HashMap<(Protocol, SocketAddrV4), usize> = HashMap::new();
        for m in &g.local_port_mappings {
            let Some(protocol) = m.protocol.value else {
                continue;
            };
            if let Some(a) = m.mapped.value {
                if let Some(first) = mapped.get(&(protocol, a)) {
                    errors.push(
                        m.mapped.line,
                        "gateway local_port_mapping mapped",
                        a,
                        format!(
                            "{protocol} {a} is already mapped at line {first}; each protocol, mapped address and port may be mapped once per gateway"
                        ),
                    );
                } else {
                    mapped.insert((protocol, a), m.mapped.line);
                }
            }
            if let Some(a) = m.original.value {
                if let Some(first) = original.get(&(protocol, a)) {
                    errors.push(
                        m.original.line,
                        "gateway local_port_mapping original",
                        a,
                        format!(
                            "{protocol} {a} already has a port mapping at line {first}; replies from a VPC service must translate back to one address, so it may be mapped once per gateway"
                        ),
                    );
                } else {
                    original.insert((protocol, a), m.original.line);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "gw.toml";

    const EXAMPLE: &str = r#"[node]
name = "gw-1"

[[connection]]
name = "line-a"
interface = "eth1"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.0/16"]
interface = "eth2"

[[tunnel]]
name = "dct-a-100"
connection = "line-a"
vlan = 100
gateway = "dcg-prod"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.100.2"
routes = ["10.0.0.0/16"]
"#;

    fn net(s: &str) -> Ipv4Net {
        s.parse().expect("test prefix")
    }

    fn errors_of(text: &str) -> Vec<ConfigError> {
        match Config::parse(text, FILE) {
            Ok(c) => panic!("expected errors, config parsed: {c:#?}"),
            Err(e) => e.0,
        }
    }

    /// Exactly one error, on `line`, naming `"value"` and containing `rule`.
    #[track_caller]
    fn assert_one_error(text: &str, line: usize, value: &str, rule: &str) {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "expected one error, got: {errors:#?}");
        assert_error(&errors[0], line, value, rule);
    }

    #[track_caller]
    fn assert_error(e: &ConfigError, line: usize, value: &str, rule: &str) {
        assert_eq!(e.file, FILE, "{e}");
        assert_eq!(e.line, line, "wrong line: {e}");
        assert!(
            e.message.contains(&format!("\"{value}\": ")),
            "value {value:?} not named: {e}"
        );
        assert!(e.message.contains(rule), "rule {rule:?} not stated: {e}");
        assert!(
            e.to_string().starts_with(&format!("{FILE}:{line}: ")),
            "{e}"
        );
        assert!(!e.to_string().contains('\n'), "multi-line: {e}");
    }

    /// The example with line `n` (1-based) replaced by `with`.
    fn example_with(n: usize, with: &str) -> String {
        EXAMPLE
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == n { with } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn example_plus(extra: &str) -> String {
        format!("{EXAMPLE}{extra}")
    }

    // A second tunnel appended to EXAMPLE starts at line 23.
    fn second_tunnel(connection: &str, vlan: i64, local: &str, peer: &str, routes: &str) -> String {
        format!(
            "\n[[tunnel]]\nname = \"t2\"\nconnection = \"{connection}\"\nvlan = {vlan}\ngateway = \"dcg-prod\"\nlocal_ip = \"{local}\"\npeer_ip = \"{peer}\"\nroutes = [{routes}]\n"
        )
    }

    #[test]
    fn example_parses_into_expected_model() {
        let config = Config::parse(EXAMPLE, FILE).expect("example is valid");
        let expected = Config {
            source: PathBuf::from(FILE),
            node: Node {
                name: "gw-1".into(),
                metrics_address: None,
            },
            connections: vec![Connection {
                name: "line-a".into(),
                interface: "eth1".into(),
                line: 4,
                interface_line: 6,
            }],
            gateways: vec![Gateway {
                name: "dcg-prod".into(),
                vpc: "vpc-prod".into(),
                vpc_cidrs: vec![net("172.16.0.0/16")],
                interface: "eth2".into(),
                local_ip_mappings: vec![],
                local_port_mappings: vec![],
                line: 8,
                interface_line: 12,
            }],
            tunnels: vec![Tunnel {
                name: "dct-a-100".into(),
                connection: "line-a".into(),
                vlan: 100,
                gateway: "dcg-prod".into(),
                local_ip: net("169.254.100.1/30"),
                peer_ip: Ipv4Addr::new(169, 254, 100, 2),
                routes: vec![net("10.0.0.0/16")],
                peer_ip_mappings: vec![],
                priority: DEFAULT_PRIORITY,
                bandwidth_mbps: None,
                health: HealthCfg::default(),
                line: 14,
            }],
        };
        assert_eq!(config, expected);
        assert_eq!(
            config.tunnels[0].local_ip.addr(),
            Ipv4Addr::new(169, 254, 100, 1)
        );
        assert_eq!(config.tunnels[0].local_ip.prefix_len(), 30);
    }

    #[test]
    fn lookups_by_name() {
        let config = Config::parse(EXAMPLE, FILE).expect("valid");
        assert_eq!(
            config.connection("line-a").map(|c| c.interface.as_str()),
            Some("eth1")
        );
        assert_eq!(
            config.gateway("dcg-prod").map(|g| g.vpc.as_str()),
            Some("vpc-prod")
        );
        assert_eq!(config.tunnel("dct-a-100").map(|t| t.vlan), Some(100));
        assert!(config.connection("nope").is_none());
        assert!(config.gateway("nope").is_none());
        assert!(config.tunnel("nope").is_none());
    }

    #[test]
    fn idle_node_is_valid() {
        let config = Config::parse("[node]\nname = \"gw-1\"\n", FILE).expect("valid");
        assert_eq!(config.node.name, "gw-1");
        assert!(
            config.connections.is_empty()
                && config.gateways.is_empty()
                && config.tunnels.is_empty()
        );
    }

    #[test]
    fn routes_may_be_empty_or_absent_and_order_is_kept() {
        let text = example_with(21, "routes = []");
        assert!(Config::parse(&text, FILE).expect("valid").tunnels[0]
            .routes
            .is_empty());
        let text = example_with(21, "");
        assert!(Config::parse(&text, FILE).expect("valid").tunnels[0]
            .routes
            .is_empty());
        let text = example_with(
            21,
            r#"routes = ["192.168.0.0/24", "10.0.0.0/8", "1.2.3.4/32"]"#,
        );
        let routes = Config::parse(&text, FILE).expect("valid").tunnels[0]
            .routes
            .clone();
        assert_eq!(
            routes,
            vec![net("192.168.0.0/24"), net("10.0.0.0/8"), net("1.2.3.4/32")]
        );
    }

    #[test]
    fn missing_node_is_an_error() {
        assert_one_error("", 1, "[node]", "every config needs a [node]");
        assert_one_error(
            "[[connection]]\nname = \"a\"\ninterface = \"eth1\"\n",
            1,
            "[node]",
            "missing",
        );
    }

    #[test]
    fn syntax_error_reports_line_and_stops() {
        let errors = errors_of(&example_with(17, "vlan = = 100"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].line, 17);
        assert!(
            errors[0].message.starts_with("invalid TOML: "),
            "{}",
            errors[0]
        );
        assert!(!errors[0].to_string().contains('\n'));
    }

    #[test]
    fn type_error_reports_line() {
        let errors = errors_of(&example_with(17, "vlan = \"100\""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].line, 17, "{}", errors[0]);
    }

    #[test]
    fn missing_key_reports_table_line() {
        let errors = errors_of(&example_with(12, ""));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].line, 8, "{}", errors[0]);
        assert!(errors[0].message.contains("interface"), "{}", errors[0]);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_line() {
        for (line, key) in [
            (2, "nmae = \"x\""),
            (6, "mtu = 9000"),
            (12, "vpc_cidr = \"1.0.0.0/8\""),
            (21, "weight = 1"),
        ] {
            let errors = errors_of(&example_with(line, key));
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert_eq!(errors[0].line, line, "{}", errors[0]);
            assert!(errors[0].message.contains("unknown field"), "{}", errors[0]);
        }
        let errors = errors_of(&example_plus("\n[[tunnel.bfd]]\ninterval = 1\n"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].message.contains("unknown field"), "{}", errors[0]);
        let errors = errors_of(&example_plus("\n[extra]\nx = 1\n"));
        assert_eq!(errors[0].line, 23, "{}", errors[0]);
        assert!(
            errors[0].message.contains("unknown field `extra`"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn node_name_must_be_a_valid_folder_name() {
        let long = "a".repeat(65);
        for bad in ["", "gw 1", "gw/1", "..", ".", "gw:1", long.as_str()] {
            assert_one_error(
                &example_with(2, &format!("name = \"{bad}\"")),
                2,
                bad,
                "[a-zA-Z0-9_.-]",
            );
        }
        let ok = "A-z_0.9".repeat(9); // 63 chars
        Config::parse(&example_with(2, &format!("name = \"{ok}\"")), FILE).expect("valid name");
    }

    #[test]
    fn metrics_address_must_be_a_listen_address() {
        for bad in ["9469", "localhost:9469", "127.0.0.1", "127.0.0.1:0"] {
            assert_one_error(
                &example_with(2, &format!("name = \"gw-1\"\nmetrics_address = \"{bad}\"")),
                3,
                bad,
                "node metrics_address",
            );
        }
        let c = Config::parse(
            &example_with(2, "name = \"gw-1\"\nmetrics_address = \"[::1]:9469\""),
            FILE,
        )
        .expect("valid address");
        assert_eq!(c.node.metrics_address, Some("[::1]:9469".parse().unwrap()));
        let c = Config::parse(&example_with(2, "name = \"gw-1\""), FILE).expect("valid");
        assert_eq!(c.node.metrics_address, None, "off by default");
    }

    #[test]
    fn duplicate_connection_name() {
        let text = example_plus("\n[[connection]]\nname = \"line-a\"\ninterface = \"eth3\"\n");
        assert_one_error(&text, 24, "line-a", "duplicate, already defined at line 5");
    }

    #[test]
    fn duplicate_gateway_name() {
        let text = example_plus("\n[[gateway]]\nname = \"dcg-prod\"\nvpc = \"vpc-b\"\nvpc_cidrs = [\"172.17.0.0/16\"]\ninterface = \"eth3\"\n");
        assert_one_error(&text, 24, "dcg-prod", "gateway names must be unique");
    }

    #[test]
    fn duplicate_tunnel_name() {
        let text = example_plus(
            &second_tunnel("line-a", 200, "169.254.200.1/30", "169.254.200.2", "")
                .replace("\"t2\"", "\"dct-a-100\""),
        );
        assert_one_error(
            &text,
            24,
            "dct-a-100",
            "duplicate, already defined at line 15",
        );
    }

    #[test]
    fn empty_names_are_rejected() {
        assert_one_error(
            &example_with(15, "name = \"\""),
            15,
            "",
            "must not be empty",
        );
        // An empty connection name also leaves the tunnel's reference dangling.
        let errors = errors_of(&example_with(5, "name = \"\""));
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_error(&errors[0], 5, "", "connection names must not be empty");
        assert_error(&errors[1], 16, "line-a", "undefined");
    }

    #[test]
    fn undefined_connection() {
        assert_one_error(
            &example_with(16, "connection = \"line-x\""),
            16,
            "line-x",
            "undefined; no [[connection]]",
        );
    }

    #[test]
    fn undefined_gateway() {
        assert_one_error(
            &example_with(18, "gateway = \"dcg-x\""),
            18,
            "dcg-x",
            "undefined; no [[gateway]]",
        );
    }

    #[test]
    fn vlan_out_of_range() {
        for bad in [0, 4095, -1, 65536, i64::MAX] {
            assert_one_error(
                &example_with(17, &format!("vlan = {bad}")),
                17,
                &bad.to_string(),
                "must be in 1..=4094",
            );
        }
        for ok in [1, 4094] {
            Config::parse(&example_with(17, &format!("vlan = {ok}")), FILE).expect("valid vlan");
        }
    }

    #[test]
    fn line_settings_parse_with_defaults() {
        let config = Config::parse(
            &example_plus(
                "priority = 200\nbandwidth_mbps = 1000\n\n[tunnel.health]\ninterval_ms = 100\n",
            ),
            FILE,
        )
        .expect("valid line settings");
        let t = &config.tunnels[0];
        assert_eq!((t.priority, t.bandwidth_mbps), (200, Some(1000)));
        assert_eq!(
            t.health,
            HealthCfg {
                interval_ms: 100,
                down_after: 3,
                up_after: 3
            }
        );
    }

    #[test]
    fn priority_out_of_range() {
        for bad in [-1, 65536] {
            assert_one_error(
                &example_plus(&format!("priority = {bad}\n")),
                22,
                &bad.to_string(),
                "must be in 0..=65535 (lower wins)",
            );
        }
    }

    #[test]
    fn bandwidth_out_of_range() {
        for bad in [0, -5, 400_001] {
            assert_one_error(
                &example_plus(&format!("bandwidth_mbps = {bad}\n")),
                22,
                &bad.to_string(),
                "must be in 1..=400000 Mbit/s; leave it out for no cap",
            );
        }
    }

    #[test]
    fn health_interval_out_of_range() {
        assert_one_error(
            &example_plus("\n[tunnel.health]\ninterval_ms = 5\n"),
            24,
            "5",
            "must be in 10..=60000",
        );
    }

    #[test]
    fn health_counts_out_of_range() {
        assert_one_error(
            &example_plus("\n[tunnel.health]\ndown_after = 0\n"),
            24,
            "0",
            "must be in 1..=100 probes",
        );
        assert_one_error(
            &example_plus("\n[tunnel.health]\ndown_after = 3\nup_after = 101\n"),
            25,
            "101",
            "must be in 1..=100 probes",
        );
    }

    #[test]
    fn unknown_health_key_is_rejected() {
        let errors = errors_of(&example_plus("\n[tunnel.health]\ntimeout_ms = 5\n"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].message.contains("timeout_ms"), "{}", errors[0]);
    }

    #[test]
    fn vlan_twice_on_one_connection() {
        let text = example_plus(&second_tunnel(
            "line-a",
            100,
            "169.254.200.1/30",
            "169.254.200.2",
            "",
        ));
        assert_one_error(
            &text,
            26,
            "100",
            "already used on connection \"line-a\" by tunnel \"dct-a-100\" (line 17)",
        );
    }

    #[test]
    fn same_vlan_on_two_connections_is_fine() {
        let text = example_plus(&format!(
            "\n[[connection]]\nname = \"line-b\"\ninterface = \"eth3\"\n{}",
            second_tunnel(
                "line-b",
                100,
                "169.254.200.1/30",
                "169.254.200.2",
                "\"10.0.0.0/16\""
            )
        ));
        let config = Config::parse(&text, FILE).expect("valid");
        assert_eq!(config.tunnels.len(), 2);
        assert_eq!(config.tunnels[1].line, 27);
    }

    #[test]
    fn two_gateways_for_one_vpc() {
        let text = example_plus("\n[[gateway]]\nname = \"dcg-b\"\nvpc = \"vpc-prod\"\nvpc_cidrs = [\"172.17.0.0/16\"]\ninterface = \"eth3\"\n");
        assert_one_error(&text, 25, "vpc-prod", "at most one gateway per VPC");
    }

    #[test]
    fn vpc_cidrs_overlap_within_a_gateway() {
        let text = example_with(11, r#"vpc_cidrs = ["172.16.0.0/16", "172.16.8.0/24"]"#);
        assert_one_error(
            &text,
            11,
            "172.16.8.0/24",
            "overlaps 172.16.0.0/16 of the same gateway (line 11); VPC CIDRs may not overlap",
        );
        let text = example_with(
            11,
            "vpc_cidrs = [\n  \"172.16.0.0/16\",\n  \"172.16.0.0/16\",\n]",
        );
        // The replaced line became four: the duplicate is on line 13.
        assert_one_error(&text, 13, "172.16.0.0/16", "VPC CIDRs may not overlap");
    }

    #[test]
    fn vpc_cidrs_overlap_across_gateways() {
        let text = example_plus("\n[[gateway]]\nname = \"dcg-b\"\nvpc = \"vpc-b\"\nvpc_cidrs = [\"172.0.0.0/8\"]\ninterface = \"eth3\"\n");
        assert_one_error(
            &text,
            26,
            "172.0.0.0/8",
            "overlaps 172.16.0.0/16 of gateway \"dcg-prod\" (line 11)",
        );
    }

    #[test]
    fn route_inside_vpc() {
        assert_one_error(
            &example_with(21, r#"routes = ["10.0.0.0/16", "172.16.4.0/24"]"#),
            21,
            "172.16.4.0/24",
            "lies inside VPC CIDR 172.16.0.0/16 of gateway \"dcg-prod\"",
        );
    }

    #[test]
    fn route_containing_vpc() {
        assert_one_error(
            &example_with(21, r#"routes = ["0.0.0.0/0"]"#),
            21,
            "0.0.0.0/0",
            "contains VPC CIDR 172.16.0.0/16",
        );
    }

    #[test]
    fn peer_outside_local_subnet() {
        assert_one_error(
            &example_with(20, "peer_ip = \"169.254.100.6\""),
            20,
            "169.254.100.6",
            "outside local_ip's subnet 169.254.100.0/30",
        );
    }

    #[test]
    fn peer_equals_local() {
        assert_one_error(
            &example_with(20, "peer_ip = \"169.254.100.1\""),
            20,
            "169.254.100.1",
            "equals local_ip",
        );
    }

    #[test]
    fn local_is_network_or_broadcast() {
        let text = example_with(19, "local_ip = \"169.254.100.0/30\"");
        assert_one_error(
            &text,
            19,
            "169.254.100.0/30",
            "is the network address of 169.254.100.0/30",
        );
        let text = example_with(19, "local_ip = \"169.254.100.3/30\"");
        assert_one_error(&text, 19, "169.254.100.3/30", "is the broadcast address");
    }

    #[test]
    fn peer_is_network_or_broadcast() {
        let text = example_with(20, "peer_ip = \"169.254.100.0\"");
        assert_one_error(
            &text,
            20,
            "169.254.100.0",
            "is the network address of local_ip's subnet",
        );
        let text = example_with(20, "peer_ip = \"169.254.100.3\"");
        assert_one_error(&text, 20, "169.254.100.3", "is the broadcast address");
    }

    #[test]
    fn local_prefix_must_leave_room_for_peer() {
        let text = example_with(19, "local_ip = \"169.254.100.1/32\"");
        assert_one_error(
            &text,
            19,
            "169.254.100.1/32",
            "prefix must be /31 or shorter",
        );
    }

    #[test]
    fn slash_31_uses_both_addresses() {
        let text = example_with(19, "local_ip = \"169.254.100.0/31\"");
        let text = text.replace("peer_ip = \"169.254.100.2\"", "peer_ip = \"169.254.100.1\"");
        let config = Config::parse(&text, FILE).expect("a /31 has two usable addresses");
        assert_eq!(config.tunnels[0].local_ip, net("169.254.100.0/31"));
        let text = example_with(19, "local_ip = \"169.254.100.0/31\"");
        assert_one_error(
            &text,
            20,
            "169.254.100.2",
            "outside local_ip's subnet 169.254.100.0/31",
        );
    }

    #[test]
    fn interface_shared_by_two_connections() {
        let text = example_plus("\n[[connection]]\nname = \"line-b\"\ninterface = \"eth1\"\n");
        assert_one_error(
            &text,
            25,
            "eth1",
            "already the trunk port of connection \"line-a\" (line 5)",
        );
    }

    #[test]
    fn interface_shared_by_connection_and_gateway() {
        let text = example_with(12, "interface = \"eth1\"");
        assert_one_error(
            &text,
            12,
            "eth1",
            "already the trunk port of connection \"line-a\"",
        );
        // Reported on the later one whatever its kind; gateways come after connections.
        assert!(errors_of(&text)[0].message.starts_with("gateway interface"));
    }

    #[test]
    fn interface_shared_by_two_gateways() {
        let text = example_plus("\n[[gateway]]\nname = \"dcg-b\"\nvpc = \"vpc-b\"\nvpc_cidrs = [\"172.17.0.0/16\"]\ninterface = \"eth2\"\n");
        assert_one_error(
            &text,
            27,
            "eth2",
            "already the VPC port of gateway \"dcg-prod\" (line 9)",
        );
    }

    #[test]
    fn interface_names_follow_linux_rules() {
        for bad in [
            "",
            "a-very-long-name",
            "eth/1",
            "eth 1",
            "eth0:1",
            "..",
            "tab\tx",
        ] {
            let text = example_with(6, &format!("interface = \"{}\"", bad.escape_debug()));
            assert_one_error(
                &text,
                6,
                &bad.escape_debug().to_string(),
                "1..=15 bytes (IFNAMSIZ)",
            );
        }
        Config::parse(&example_with(6, "interface = \"enp129s0f1np1.1\""), FILE)
            .expect("15 chars is fine");
    }

    #[test]
    fn ipv6_is_rejected_clearly() {
        let cases = [
            (11, "vpc_cidrs = [\"fd00::/8\"]", "fd00::/8"),
            (19, "local_ip = \"fe80::1/64\"", "fe80::1/64"),
            (20, "peer_ip = \"fe80::2\"", "fe80::2"),
            (21, "routes = [\"2001:db8::/32\"]", "2001:db8::/32"),
        ];
        for (line, text, value) in cases {
            let errors = errors_of(&example_with(line, text));
            // A bad local_ip/peer_ip hides only the checks that need it.
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert_error(&errors[0], line, value, "IPv6 is not supported yet");
        }
    }

    #[test]
    fn prefixes_must_be_canonical() {
        assert_one_error(
            &example_with(21, r#"routes = ["10.0.0.1/16"]"#),
            21,
            "10.0.0.1/16",
            "did you mean \"10.0.0.0/16\"?",
        );
        assert_one_error(
            &example_with(11, r#"vpc_cidrs = ["172.16.9.9/16"]"#),
            11,
            "172.16.9.9/16",
            "did you mean \"172.16.0.0/16\"?",
        );
    }

    #[test]
    fn malformed_addresses() {
        assert_one_error(
            &example_with(21, r#"routes = ["10.0.0.0"]"#),
            21,
            "10.0.0.0",
            "missing prefix length",
        );
        assert_one_error(
            &example_with(21, r#"routes = ["10.0.0.0/33"]"#),
            21,
            "10.0.0.0/33",
            "not an IPv4 prefix",
        );
        assert_one_error(
            &example_with(19, r#"local_ip = "169.254.100.1""#),
            19,
            "169.254.100.1",
            "missing prefix length",
        );
        assert_one_error(
            &example_with(19, r#"local_ip = "bogus""#),
            19,
            "bogus",
            "not an IPv4 address with prefix length",
        );
        assert_one_error(
            &example_with(20, r#"peer_ip = "169.254.100.2/30""#),
            20,
            "169.254.100.2/30",
            "without prefix length",
        );
        assert_one_error(
            &example_with(20, r#"peer_ip = "300.1.1.1""#),
            20,
            "300.1.1.1",
            "not an IPv4 address",
        );
    }

    #[test]
    fn all_errors_are_reported_sorted_by_line() {
        let text = r#"[node]
name = "gw 1"

[[connection]]
name = "line-a"
interface = "eth1"

[[connection]]
name = "line-a"
interface = "eth1"

[[gateway]]
name = "dcg-prod"
vpc = "vpc-prod"
vpc_cidrs = ["172.16.0.1/16", "fd00::/8"]
interface = "eth2"

[[tunnel]]
name = "t1"
connection = "line-z"
vlan = 5000
gateway = "dcg-z"
local_ip = "169.254.100.1/30"
peer_ip = "169.254.101.2"
routes = ["10.0.0.0/16"]
"#;
        let errors = errors_of(text);
        let got: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.split(':').next().unwrap_or("")))
            .collect();
        assert_eq!(
            got,
            vec![
                (2, "node name \"gw 1\""),
                (9, "connection name \"line-a\""),
                (10, "connection interface \"eth1\""),
                (15, "gateway vpc_cidrs \"172.16.0.1/16\""),
                (15, "gateway vpc_cidrs \"fd00"),
                (20, "tunnel connection \"line-z\""),
                (21, "tunnel vlan \"5000\""),
                (22, "tunnel gateway \"dcg-z\""),
                (24, "tunnel peer_ip \"169.254.101.2\""),
            ],
            "{}",
            ConfigErrors(errors.clone())
        );
        let shown = ConfigErrors(errors).to_string();
        assert_eq!(shown.lines().count(), 9);
        assert!(shown.lines().all(|l| l.starts_with("gw.toml:")), "{shown}");
    }

    #[test]
    fn check_interfaces_reports_missing_ones_with_their_line() {
        let text = example_plus("\n[[connection]]\nname = \"line-b\"\ninterface = \"eth3\"\n");
        let config = Config::parse(&text, FILE).expect("valid");
        config.check_interfaces(|_| true).expect("all exist");
        let errors = config
            .check_interfaces(|name| name == "eth1")
            .expect_err("eth2 and eth3 missing")
            .0;
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_error(&errors[0], 12, "eth2", "no such network interface");
        assert!(errors[0].message.starts_with("gateway interface"));
        assert_error(&errors[1], 25, "eth3", "no such network interface");
        assert!(errors[1].message.starts_with("connection interface"));
    }

    #[test]
    fn load_reads_the_file_or_names_it() {
        let dir = std::env::temp_dir().join(format!("gateway-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("gw.toml");
        std::fs::write(&path, EXAMPLE).expect("write");
        let config = Config::load(&path).expect("valid");
        assert_eq!(config.source, path);

        std::fs::write(&path, example_with(17, "vlan = 0")).expect("write");
        let errors = Config::load(&path).expect_err("invalid");
        assert_eq!(
            errors.to_string(),
            format!(
                "{}:17: tunnel vlan \"0\": out of range; VLAN IDs must be in 1..=4094",
                path.display()
            )
        );

        let missing = dir.join("missing.toml");
        let errors = Config::load(&missing).expect_err("no file").0;
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .contains(&missing.display().to_string()),
            "{}",
            errors[0]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn values_are_escaped_to_one_line() {
        let text = example_with(16, "connection = \"a\\\"b\\nc\"");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert_eq!(errors[0].to_string(), "gw.toml:16: tunnel connection \"a\\\"b\\nc\": undefined; no [[connection]] has this name");
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        let inputs = [
            "", "\n\n\n", "[", "[[tunnel]]", "node = 1", "[node]\nname = 1\n", "[node]\nname = \"a\"\n[[tunnel]]\n",
            "\u{feff}[node]\nname = \"a\"\n", "[node]\r\nname = \"a\"\r\nfoo = 1\r\n", "connection = [{name = \"a\", interface = \"b\"}]",
            "[node]\nname=\"é\"\n", "[node]\nname = \"a\"\n[[tunnel]]\nname=\"t\"\nconnection=\"c\"\nvlan=1\ngateway=\"g\"\nlocal_ip=\"0.0.0.0/0\"\npeer_ip=\"255.255.255.255\"\n",
        ];
        for input in inputs {
            let _ = Config::parse(input, FILE).map_err(|e| e.to_string());
        }
        let errors = errors_of("[node]\r\nname = \"a\"\r\nfoo = 1\r\n");
        assert_eq!(errors[0].line, 3);
    }

    // --- NAT mappings -----------------------------------------------------

    /// Appended to EXAMPLE: the issue's example. Array-of-tables attach to
    /// the last [[tunnel]] / [[gateway]], wherever they are written.
    const NAT: &str = r#"
[[tunnel.peer_ip_mapping]]
original = "10.0.0.0/24"
mapped   = "100.64.1.0/24"

[[gateway.local_ip_mapping]]
original = "172.16.1.0/24"
mapped   = "192.168.50.0/24"

[[gateway.local_port_mapping]]
protocol = "tcp"
original = "172.16.0.10:80"
mapped   = "192.168.60.1:8080"
"#;

    fn nat_example() -> String {
        example_plus(NAT)
    }

    /// The NAT example with line `n` (1-based) replaced by `with`.
    fn nat_with(n: usize, with: &str) -> String {
        nat_example()
            .lines()
            .enumerate()
            .map(|(i, l)| if i + 1 == n { with } else { l })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn nat_plus(extra: &str) -> String {
        format!("{}{extra}", nat_example())
    }

    fn sock(s: &str) -> SocketAddrV4 {
        s.parse().expect("test socket address")
    }

    #[test]
    fn nat_example_parses_into_expected_model() {
        let config = Config::parse(&nat_example(), FILE).expect("NAT example is valid");
        assert_eq!(
            config.tunnels[0].peer_ip_mappings,
            vec![IpMappingCfg {
                original: net("10.0.0.0/24"),
                mapped: net("100.64.1.0/24"),
                line: 23,
            }]
        );
        let g = &config.gateways[0];
        assert_eq!(
            g.local_ip_mappings,
            vec![IpMappingCfg {
                original: net("172.16.1.0/24"),
                mapped: net("192.168.50.0/24"),
                line: 27,
            }]
        );
        assert_eq!(
            g.local_port_mappings,
            vec![PortMappingCfg {
                protocol: Protocol::Tcp,
                original: sock("172.16.0.10:80"),
                mapped: sock("192.168.60.1:8080"),
                line: 31,
            }]
        );
        assert_eq!(Protocol::Tcp.number(), 6);
        assert_eq!(Protocol::Udp.number(), 17);
        // Everything else is as without NAT.
        let plain = Config::parse(EXAMPLE, FILE).expect("valid");
        assert_eq!(config.tunnels[0].routes, plain.tunnels[0].routes);
        assert_eq!(config.gateways[0].vpc_cidrs, plain.gateways[0].vpc_cidrs);
    }

    #[test]
    fn mappings_may_be_inline_tables_and_hosts() {
        let text = example_with(
            21,
            r#"peer_ip_mapping = [{ original = "10.0.0.5", mapped = "100.64.1.5/32" }, { original = "10.0.1.0/24", mapped = "100.64.2.0/24" }]"#,
        );
        let config = Config::parse(&text, FILE).expect("valid");
        let m = &config.tunnels[0].peer_ip_mappings;
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].original, net("10.0.0.5/32"));
        assert_eq!(m[0].mapped, net("100.64.1.5/32"));
        assert_eq!(m[0].line, 21);
        let text = nat_with(32, "protocol = \"udp\"");
        let config = Config::parse(&text, FILE).expect("valid");
        assert_eq!(
            config.gateways[0].local_port_mappings[0].protocol,
            Protocol::Udp
        );
    }

    #[test]
    fn two_tunnels_may_map_the_same_original() {
        let text = nat_plus(&format!(
            "{}\n[[tunnel.peer_ip_mapping]]\noriginal = \"10.0.0.0/24\"\nmapped = \"100.64.2.0/24\"\n",
            second_tunnel(
                "line-a",
                200,
                "169.254.200.1/30",
                "169.254.200.2",
                "\"10.0.0.0/24\""
            )
        ));
        let config = Config::parse(&text, FILE).expect("valid");
        assert_eq!(
            config.tunnels[1].peer_ip_mappings[0].mapped,
            net("100.64.2.0/24")
        );
        // A route to a mapped range's addresses that is not the mapped prefix
        // itself is fine too.
        let text = nat_with(21, r#"routes = ["10.0.0.0/16", "100.64.0.0/16"]"#);
        Config::parse(&text, FILE).expect("overlapping route is allowed");
    }

    #[test]
    fn mapping_prefix_lengths_differ() {
        assert_one_error(
            &nat_with(25, "mapped = \"100.64.1.0/25\""),
            25,
            "100.64.1.0/25",
            "prefix length /25 differs from original 10.0.0.0/24 (line 24)",
        );
        // A host on one side, a prefix on the other.
        assert_one_error(
            &nat_with(28, "original = \"172.16.1.9\""),
            29,
            "192.168.50.0/24",
            "differs from original 172.16.1.9/32",
        );
    }

    #[test]
    fn mapping_prefixes_must_be_canonical() {
        assert_one_error(
            &nat_with(24, "original = \"10.0.0.1/24\""),
            24,
            "10.0.0.1/24",
            "did you mean \"10.0.0.0/24\"?",
        );
        assert_one_error(
            &nat_with(29, "mapped = \"192.168.50.7/24\""),
            29,
            "192.168.50.7/24",
            "did you mean \"192.168.50.0/24\"?",
        );
    }

    #[test]
    fn malformed_mapping_values() {
        let cases = [
            (
                24,
                "original = \"bogus\"",
                "bogus",
                "not an IPv4 address or prefix",
            ),
            (
                25,
                "mapped = \"fd00::/64\"",
                "fd00::/64",
                "IPv6 is not supported yet",
            ),
            (
                33,
                "original = \"172.16.0.10\"",
                "172.16.0.10",
                "missing port",
            ),
            (
                34,
                "mapped = \"192.168.60.1:70000\"",
                "192.168.60.1:70000",
                "not an IPv4 address and port",
            ),
            (
                34,
                "mapped = \"[fd00::1]:80\"",
                "[fd00::1]:80",
                "IPv6 is not supported yet",
            ),
        ];
        for (line, text, value, rule) in cases {
            assert_one_error(&nat_with(line, text), line, value, rule);
        }
    }

    #[test]
    fn port_zero_is_invalid() {
        assert_one_error(
            &nat_with(34, "mapped = \"192.168.60.1:0\""),
            34,
            "192.168.60.1:0",
            "port 0 is not a usable port",
        );
        assert_one_error(
            &nat_with(33, "original = \"172.16.0.10:0\""),
            33,
            "172.16.0.10:0",
            "ports are 1..=65535",
        );
    }

    #[test]
    fn protocol_must_be_tcp_or_udp() {
        for bad in ["icmp", "TCP", ""] {
            assert_one_error(
                &nat_with(32, &format!("protocol = \"{bad}\"")),
                32,
                bad,
                "port mappings are \"tcp\" or \"udp\"",
            );
        }
    }

    #[test]
    fn unknown_mapping_keys_are_rejected() {
        let errors = errors_of(&nat_with(25, "mapped = \"100.64.1.0/24\"\nport = 1"));
        assert_eq!(errors.len(), 1, "{errors:#?}");
        assert!(errors[0].message.contains("unknown field"), "{}", errors[0]);
    }

    #[test]
    fn peer_originals_overlap_within_a_tunnel() {
        let text = nat_plus(
            "\n[[tunnel.peer_ip_mapping]]\noriginal = \"10.0.0.128/25\"\nmapped = \"100.64.2.0/25\"\n",
        );
        assert_one_error(
            &text,
            37,
            "10.0.0.128/25",
            "overlaps original 10.0.0.0/24 of the same tunnel (line 24); the originals of one tunnel's peer_ip_mappings may not overlap",
        );
    }

    #[test]
    fn local_originals_overlap_within_a_gateway() {
        let text = nat_plus(
            "\n[[gateway.local_ip_mapping]]\noriginal = \"172.16.1.7\"\nmapped = \"192.168.51.7\"\n",
        );
        assert_one_error(
            &text,
            37,
            "172.16.1.7/32",
            "overlaps original 172.16.1.0/24 of the same gateway (line 28)",
        );
    }

    #[test]
    fn mapped_range_overlaps_vpc_cidrs() {
        let rule = "overlaps VPC CIDR 172.16.0.0/16 (line 11) of gateway \"dcg-prod\"";
        assert_one_error(
            &nat_with(25, "mapped = \"172.16.5.0/24\""),
            25,
            "172.16.5.0/24",
            rule,
        );
        assert_one_error(
            &nat_with(29, "mapped = \"172.16.50.0/24\""),
            29,
            "172.16.50.0/24",
            rule,
        );
        assert_one_error(
            &nat_with(34, "mapped = \"172.16.60.1:8080\""),
            34,
            "172.16.60.1:8080",
            rule,
        );
    }

    #[test]
    fn mapped_ranges_overlap_each_other() {
        // Peer mapping of another tunnel on the same gateway.
        let text = nat_plus(&format!(
            "{}\n[[tunnel.peer_ip_mapping]]\noriginal = \"10.0.0.0/25\"\nmapped = \"100.64.1.128/25\"\n",
            second_tunnel("line-a", 200, "169.254.200.1/30", "169.254.200.2", "")
        ));
        assert_one_error(
            &text,
            47,
            "100.64.1.128/25",
            "overlaps mapped range 100.64.1.0/24 of tunnel \"dct-a-100\"'s peer_ip_mapping (line 25)",
        );
        // A local mapping and a peer mapping.
        assert_one_error(
            &nat_with(29, "mapped = \"100.64.1.0/24\""),
            29,
            "100.64.1.0/24",
            "overlaps mapped range 100.64.1.0/24 of tunnel \"dct-a-100\"'s peer_ip_mapping (line 25)",
        );
        // A port mapping's address inside a local mapping's mapped range.
        assert_one_error(
            &nat_with(34, "mapped = \"192.168.50.9:8080\""),
            34,
            "192.168.50.9:8080",
            "overlaps mapped range 192.168.50.0/24 of a local_ip_mapping (line 29)",
        );
        // ... and the other way round: reported on the later line.
        let text = nat_plus(
            "\n[[gateway.local_ip_mapping]]\noriginal = \"172.16.2.0/24\"\nmapped = \"192.168.60.0/24\"\n",
        );
        assert_one_error(
            &text,
            38,
            "192.168.60.0/24",
            "overlaps mapped address 192.168.60.1:8080 of a local_port_mapping (line 34)",
        );
    }

    #[test]
    fn mapped_ranges_of_different_gateways_may_overlap() {
        let text = nat_plus(concat!(
            "\n[[gateway]]\nname = \"dcg-b\"\nvpc = \"vpc-b\"\nvpc_cidrs = [\"172.17.0.0/16\"]\ninterface = \"eth3\"\n",
            "\n[[gateway.local_ip_mapping]]\noriginal = \"172.17.1.0/24\"\nmapped = \"100.64.1.0/24\"\n",
        ));
        Config::parse(&text, FILE).expect("another gateway's table");
    }

    #[test]
    fn port_mappings_share_a_mapped_address_on_different_ports() {
        let text = nat_plus(concat!(
            "\n[[gateway.local_port_mapping]]\nprotocol = \"tcp\"\noriginal = \"172.16.0.11:80\"\nmapped = \"192.168.60.1:8081\"\n",
            "\n[[gateway.local_port_mapping]]\nprotocol = \"udp\"\noriginal = \"172.16.0.10:80\"\nmapped = \"192.168.60.1:8080\"\n",
        ));
        let config = Config::parse(&text, FILE).expect("valid");
        assert_eq!(config.gateways[0].local_port_mappings.len(), 3);
    }

    #[test]
    fn duplicate_port_mapping_mapped_side() {
        let text = nat_plus(
            "\n[[gateway.local_port_mapping]]\nprotocol = \"tcp\"\noriginal = \"172.16.0.11:80\"\nmapped = \"192.168.60.1:8080\"\n",
        );
        assert_one_error(
            &text,
            39,
            "192.168.60.1:8080",
            "tcp 192.168.60.1:8080 is already mapped at line 34",
        );
    }

    #[test]
    fn duplicate_port_mapping_original_side() {
        let text = nat_plus(
            "\n[[gateway.local_port_mapping]]\nprotocol = \"tcp\"\noriginal = \"172.16.0.10:80\"\nmapped = \"192.168.60.2:8080\"\n",
        );
        assert_one_error(
            &text,
            38,
            "172.16.0.10:80",
            "tcp 172.16.0.10:80 already has a port mapping at line 33",
        );
    }

    #[test]
    fn port_mapping_original_outside_vpc() {
        assert_one_error(
            &nat_with(33, "original = \"10.1.1.1:80\""),
            33,
            "10.1.1.1:80",
            "address outside the VPC CIDRs of gateway \"dcg-prod\" (172.16.0.0/16)",
        );
    }

    #[test]
    fn local_ip_mapping_original_outside_vpc() {
        assert_one_error(
            &nat_with(28, "original = \"172.17.1.0/24\""),
            28,
            "172.17.1.0/24",
            "outside the VPC CIDRs of gateway \"dcg-prod\" (172.16.0.0/16); a local_ip_mapping maps the VPC's own addresses",
        );
        // Partly inside is still outside.
        assert_one_error(
            &nat_with(28, "original = \"172.0.0.0/8\"").replace("192.168.50.0/24", "10.0.0.0/8"),
            28,
            "172.0.0.0/8",
            "outside the VPC CIDRs",
        );
    }

    #[test]
    fn route_equal_to_a_mapped_prefix() {
        assert_one_error(
            &nat_with(21, r#"routes = ["10.0.0.0/16", "100.64.1.0/24"]"#),
            21,
            "100.64.1.0/24",
            "is the mapped prefix of tunnel \"dct-a-100\"'s peer_ip_mapping (line 25) on gateway \"dcg-prod\"",
        );
    }

    #[test]
    fn all_mapping_errors_are_reported() {
        let text = nat_plus(concat!(
            "\n[[tunnel.peer_ip_mapping]]\noriginal = \"10.0.0.0/24\"\nmapped = \"100.64.8.0/23\"\n",
            "\n[[gateway.local_port_mapping]]\nprotocol = \"sctp\"\noriginal = \"172.16.0.10:80\"\nmapped = \"192.168.60.1:0\"\n",
            "\n[[gateway.local_port_mapping]]\nprotocol = \"tcp\"\noriginal = \"172.16.0.10:80\"\nmapped = \"192.168.50.1:80\"\n",
        ));
        let errors = errors_of(&text);
        let got: Vec<(usize, &str)> = errors
            .iter()
            .map(|e| (e.line, e.message.split(": ").next().unwrap_or("")))
            .collect();
        assert_eq!(
            got,
            vec![
                (37, "tunnel peer_ip_mapping original \"10.0.0.0/24\""),
                (38, "tunnel peer_ip_mapping mapped \"100.64.8.0/23\""),
                (41, "gateway local_port_mapping protocol \"sctp\""),
                (43, "gateway local_port_mapping mapped \"192.168.60.1:0\""),
                (47, "gateway local_port_mapping original \"172.16.0.10:80\""),
                (48, "gateway local_port_mapping mapped \"192.168.50.1:80\""),
            ],
            "{}",
            ConfigErrors(errors.clone())
        );
    }

    /// 100,000 peer mappings (and as many port mappings) validate in
    /// O(n log n): an all-pairs check would take minutes here.
    #[test]
    fn validates_100k_mappings() {
        use std::fmt::Write;
        const N: u32 = 100_000;
        let mut text = nat_example();
        // Four tunnels on one gateway, 25,000 host mappings each; every
        // tunnel maps the same originals to its own mapped addresses.
        for t in 0..4u32 {
            write!(
                text,
                "{}",
                second_tunnel(
                    "line-a",
                    200 + i64::from(t),
                    &format!("169.254.{}.1/30", 200 + t),
                    &format!("169.254.{}.2", 200 + t),
                    ""
                )
                .replace("\"t2\"", &format!("\"t{t}\""))
            )
            .expect("write");
            for i in 0..N / 4 {
                let original = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i);
                let mapped = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 80, 0, 0)) + t * N + i);
                write!(
                    text,
                    "\n[[tunnel.peer_ip_mapping]]\noriginal = \"{original}\"\nmapped = \"{mapped}\"\n"
                )
                .expect("write");
            }
        }
        for i in 0..N / 4 {
            let original = Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 128, 0)) + i);
            write!(
                text,
                "\n[[gateway.local_port_mapping]]\nprotocol = \"udp\"\noriginal = \"{original}:53\"\nmapped = \"192.168.61.1:{}\"\n",
                1 + i
            )
            .expect("write");
        }
        let started = std::time::Instant::now();
        let config = Config::parse(&text, FILE).expect("valid");
        let elapsed = started.elapsed();
        let total: usize = config
            .tunnels
            .iter()
            .map(|t| t.peer_ip_mappings.len())
            .sum();
        assert_eq!(total, N as usize + 1, "plus the example's");
        assert_eq!(
            config.gateways[0].local_port_mappings.len(),
            (N / 4) as usize + 1
        );
        println!(
            "parsed and validated {total} peer + {} port mappings in {elapsed:?}",
            N / 4
        );

        // One overlap among them is still found.
        let bad = text.replace("mapped = \"100.80.0.5\"", "mapped = \"100.80.0.4\"");
        let errors = errors_of(&bad);
        assert_eq!(errors.len(), 1, "{}", ConfigErrors(errors.clone()));
        assert!(errors[0]
            .message
            .contains("overlaps mapped range 100.80.0.4/32"));
    }
}
