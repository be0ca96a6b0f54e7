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

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
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
    /// or contains, the gateway's VPC CIDRs).
    pub routes: Vec<Ipv4Net>,
    /// Line of the `[[tunnel]]` header.
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
}

/// Stage 2: parses the raw strings, reporting values that do not parse.
fn locate(raw: raw::Config, lines: &LineIndex, errors: &mut Errors) -> LocatedConfig {
    let at = |s: toml::Spanned<String>| At {
        line: lines.line(s.span().start),
        value: s.into_inner(),
    };

    let node = raw.node.map(|n| LocatedNode {
        name: at(n.into_inner().name),
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
            LocatedGateway {
                line,
                name: at(g.name),
                vpc: at(g.vpc),
                vpc_cidrs,
                interface: at(g.interface),
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
            LocatedTunnel {
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

impl LocatedConfig {
    /// Stage 3b: the public model. `None` only if a value failed to parse,
    /// which has been reported already.
    fn into_model(self, source: PathBuf) -> Option<Config> {
        let node = Node {
            name: self.node?.name.value,
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
            (21, "priority = 1"),
        ] {
            let errors = errors_of(&example_with(line, key));
            assert_eq!(errors.len(), 1, "{errors:#?}");
            assert_eq!(errors[0].line, line, "{}", errors[0]);
            assert!(errors[0].message.contains("unknown field"), "{}", errors[0]);
        }
        let errors = errors_of(&example_plus("\n[[tunnel.health]]\ninterval = 1\n"));
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
}
