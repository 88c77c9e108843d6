//! Where the browser may go (CONTRACT §5, issue "Safety"): the URL and IP
//! rules, and the DNS-resolving check applied to every request.
//!
//! * Schemes: only `http`, `https`, `ws` and `wss` reach the network; a
//!   navigation may also go to `about:blank`. `file:`, `chrome:`,
//!   `javascript:`, `data:` and the rest are refused for navigation.
//! * Always refused: link-local 169.254.0.0/16 (cloud metadata) and
//!   fd00:ec2::254 (AWS metadata over IPv6), fe80::/10, and IPv4 addresses
//!   reached through an IPv6 form (`::ffff:169.254.169.254`).
//! * With `WEB_BLOCK_PRIVATE=true`: loopback, RFC 1918, CGNAT, unique-local,
//!   unspecified, multicast and the other non-public ranges too.
//! * `WEB_BLOCK_EXTRA`: more CIDR blocks refused always (tests put a
//!   loopback address such as 127.0.0.2/32 here as a safe stand-in for a
//!   private address).
//!
//! A host name is resolved first and refused if *any* of its addresses is
//! blocked (so a name pointing at the metadata address is refused like the
//! address itself); a name that does not resolve is refused too (fail closed).
//! The egress proxy ([`crate::egress`]) applies the same [`Policy`] to the
//! address it actually connects to, which closes the gap between this check
//! and Chromium's own resolution (DNS rebinding) and covers WebSockets.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::Duration;

use url::Url;

use crate::resolver::{DnsError, Resolver, LOOKUP_TIMEOUT, PER_PAGE_LOOKUPS};

/// How long a DNS lookup made for a check may take.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// An IP network `addr/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Self {
        Cidr {
            addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix,
        }
    }

    pub const fn v6(segments: [u16; 8], prefix: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a /32 or /128).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Parses a comma-separated list of CIDR blocks (clap value parser of `WEB_BLOCK_EXTRA`).
pub fn parse_cidr_list(s: &str) -> Result<Vec<Cidr>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(Cidr::from_str)
        .collect()
}

/// Refused whatever the configuration: link-local / cloud metadata.
const ALWAYS_BLOCKED: &[(Cidr, &str)] = &[
    (
        Cidr::v4(169, 254, 0, 0, 16),
        "link-local / cloud metadata range 169.254.0.0/16",
    ),
    (
        Cidr::v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        "cloud metadata address fd00:ec2::254",
    ),
    (
        Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        "IPv6 link-local range fe80::/10",
    ),
];

/// Refused when `WEB_BLOCK_PRIVATE=true`: everything that is not the public internet.
const PRIVATE: &[(Cidr, &str)] = &[
    (Cidr::v4(127, 0, 0, 0, 8), "loopback range 127.0.0.0/8"),
    (Cidr::v4(10, 0, 0, 0, 8), "private range 10.0.0.0/8"),
    (Cidr::v4(172, 16, 0, 0, 12), "private range 172.16.0.0/12"),
    (Cidr::v4(192, 168, 0, 0, 16), "private range 192.168.0.0/16"),
    (
        Cidr::v4(100, 64, 0, 0, 10),
        "shared address range 100.64.0.0/10",
    ),
    (Cidr::v4(0, 0, 0, 0, 8), "\"this network\" range 0.0.0.0/8"),
    (
        Cidr::v4(192, 0, 0, 0, 24),
        "IETF protocol range 192.0.0.0/24",
    ),
    (
        Cidr::v4(198, 18, 0, 0, 15),
        "benchmarking range 198.18.0.0/15",
    ),
    (Cidr::v4(224, 0, 0, 0, 4), "multicast range 224.0.0.0/4"),
    (Cidr::v4(240, 0, 0, 0, 4), "reserved range 240.0.0.0/4"),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "IPv6 loopback ::1"),
    (
        Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128),
        "unspecified address ::",
    ),
    (
        Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        "IPv6 unique-local range fc00::/7",
    ),
    (
        Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        "IPv6 multicast range ff00::/8",
    ),
];

/// The runtime's own listening ports (DevTools, egress proxy, metrics):
/// refused for every page on every local address, whatever
/// `WEB_BLOCK_PRIVATE` says. Shared by every clone of a [`Policy`], so a
/// port registered after a relaunch counts everywhere at once.
#[derive(Debug, Clone, Default)]
pub struct OwnPorts(
    std::sync::Arc<std::sync::RwLock<std::collections::BTreeMap<u16, &'static str>>>,
);

impl OwnPorts {
    /// Registers `port` as the runtime's `what` (e.g. `"DevTools"`).
    pub fn add(&self, port: u16, what: &'static str) {
        if let Ok(mut m) = self.0.write() {
            m.insert(port, what);
        }
    }

    pub fn remove(&self, port: u16) {
        if let Ok(mut m) = self.0.write() {
            m.remove(&port);
        }
    }

    fn get(&self, port: u16) -> Option<&'static str> {
        self.0.read().ok().and_then(|m| m.get(&port).copied())
    }

    /// The registered ports, sorted.
    pub fn list(&self) -> Vec<u16> {
        self.0
            .read()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default()
    }
}

/// One `WEB_ALLOW_HOSTS` entry: a host name or address, optionally with a
/// port, let through the `WEB_BLOCK_PRIVATE` ranges (never through the
/// always-blocked ones, nor to the runtime's own ports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowHost {
    /// Lower-case name, or an address without brackets.
    pub host: String,
    pub port: Option<u16>,
}

impl FromStr for AllowHost {
    type Err = String;

    /// `demo.local`, `127.0.0.1:8765`, `[::1]:8080`, `localhost:8765`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let bad = || format!("{s:?} is not HOST or HOST:PORT");
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, after) = rest.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad()),
            };
            (h.to_owned(), port)
        } else if s.matches(':').count() > 1 {
            (s.to_owned(), None) // a bare IPv6 address
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (s.to_owned(), None),
            }
        };
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(bad());
        }
        let port = port
            .map(|p| {
                p.parse::<u16>()
                    .map_err(|_| format!("{s:?}: bad port {p:?}"))
            })
            .transpose()?;
        Ok(AllowHost {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl fmt::Display for AllowHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        match self.port {
            Some(p) => write!(f, "{host}:{p}"),
            None => f.write_str(&host),
        }
    }
}

/// Parses a comma-separated `WEB_ALLOW_HOSTS` list.
pub fn parse_allow_list(s: &str) -> Result<Vec<AllowHost>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(AllowHost::from_str)
        .collect()
}

/// The IPv4 addresses an IPv6 address carries (IPv4-mapped/compatible,
/// NAT64 `64:ff9b::/96` and the local-use `64:ff9b:1::/48` in every RFC 6052
/// layout, 6to4 `2002::/16`, Teredo `2001::/32` server and client): a
/// translator or relay would deliver the packet there, so it is judged as
/// that address.
pub fn embedded_ipv4(v6: Ipv6Addr) -> Vec<Ipv4Addr> {
    let s = v6.segments();
    let b = v6.octets();
    let v4 = |o: [u8; 4]| Ipv4Addr::from(o);
    let mut out = Vec::new();
    if let Some(m) = v6.to_ipv4_mapped() {
        out.push(m);
    } else if s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1) {
        out.push(v4([b[12], b[13], b[14], b[15]]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        out.push(v4([b[12], b[13], b[14], b[15]]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        // RFC 6052 §2.2: prefix lengths 32..96, the octet at bits 64..72
        // (index 8) is skipped.
        out.push(v4([b[4], b[5], b[6], b[7]])); // /32
        out.push(v4([b[5], b[6], b[7], b[9]])); // /40
        out.push(v4([b[6], b[7], b[9], b[10]])); // /48
        out.push(v4([b[7], b[9], b[10], b[11]])); // /56
        out.push(v4([b[9], b[10], b[11], b[12]])); // /64
        out.push(v4([b[12], b[13], b[14], b[15]])); // /96
    }
    if s[0] == 0x2002 {
        out.push(v4([b[2], b[3], b[4], b[5]]));
    }
    if s[0] == 0x2001 && s[1] == 0 {
        out.push(v4([b[4], b[5], b[6], b[7]])); // Teredo server
        out.push(v4([!b[12], !b[13], !b[14], !b[15]])); // Teredo client (obfuscated)
    }
    out
}

/// Whether `ip` is an address of this machine (loopback, unspecified, or on
/// one of its interfaces: binding to it succeeds; nothing is sent).
fn is_local_address(ip: IpAddr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(std::net::SocketAddr::new(ip, 0)).is_ok()
}

/// The destination rules of one runtime.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `WEB_BLOCK_PRIVATE`: refuse loopback and private ranges too.
    pub block_private: bool,
    /// `WEB_BLOCK_EXTRA`: more blocks refused always.
    pub extra: Vec<Cidr>,
    /// `WEB_ALLOW_HOSTS`: destinations let through the private ranges.
    pub allow: Vec<AllowHost>,
    /// The runtime's own ports, refused on local addresses always.
    pub own_ports: OwnPorts,
    /// The bounded resolver of the checks (shared by every clone).
    pub resolver: Resolver,
}

impl Policy {
    pub fn new(block_private: bool, extra: Vec<Cidr>) -> Self {
        Policy {
            block_private,
            extra,
            ..Default::default()
        }
    }

    /// The same rules with `allow` let through the private ranges.
    pub fn with_allow(mut self, allow: Vec<AllowHost>) -> Self {
        self.allow = allow;
        self
    }

    /// Whether `host` (a name or an address, brackets optional) on `port` is
    /// on the `WEB_ALLOW_HOSTS` list.
    pub fn allowed(&self, host: &str, port: u16) -> bool {
        if self.allow.is_empty() {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.allow
            .iter()
            .any(|a| a.host == host && a.port.is_none_or(|p| p == port))
    }

    /// Why `ip` is refused, or `None` when it may be reached (no port, not
    /// on the allow list).
    pub fn check_ip(&self, ip: IpAddr) -> Option<String> {
        self.check_addr(ip, None, false)
    }

    /// Why a connection to `ip` (on `port`, when known) is refused, or
    /// `None`. `allowed`: the destination is on `WEB_ALLOW_HOSTS`, so the
    /// `WEB_BLOCK_PRIVATE` ranges do not apply.
    pub fn check_addr(&self, ip: IpAddr, port: Option<u16>, allowed: bool) -> Option<String> {
        // An IPv4 address in IPv6 clothing (mapped, NAT64, 6to4, Teredo) is
        // judged as the IPv4 address it leads to, as well as itself.
        let mut candidates = vec![ip];
        if let IpAddr::V6(v6) = ip {
            candidates.extend(embedded_ipv4(v6).into_iter().map(IpAddr::V4));
        }
        let shown = |c: IpAddr| {
            if c == ip {
                c.to_string()
            } else {
                format!("{ip} (= {c})")
            }
        };
        for &c in &candidates {
            if let Some((_, why)) = ALWAYS_BLOCKED.iter().find(|(b, _)| b.contains(c)) {
                return Some(format!("{} is in the {why} (always blocked)", shown(c)));
            }
        }
        if let Some(port) = port {
            if let Some(what) = self.own_ports.get(port) {
                if let Some(&c) = candidates.iter().find(|c| is_local_address(**c)) {
                    return Some(format!(
                        "{}:{port} is the runtime's own {what} port (always blocked)",
                        shown(c)
                    ));
                }
            }
        }
        for &c in &candidates {
            if let Some(b) = self.extra.iter().find(|b| b.contains(c)) {
                return Some(format!(
                    "{} is in {b} (blocked by WEB_BLOCK_EXTRA)",
                    shown(c)
                ));
            }
        }
        if self.block_private && !allowed {
            for &c in &candidates {
                if let Some((_, why)) = PRIVATE.iter().find(|(b, _)| b.contains(c)) {
                    return Some(format!(
                        "{} is in the {why} (blocked by WEB_BLOCK_PRIVATE=true; WEB_ALLOW_HOSTS lets a host through)",
                        shown(c)
                    ));
                }
            }
        }
        None
    }

    /// Checks a URL about to be loaded: scheme, then every address its host
    /// resolves to. `Ok(())` = allowed; `Err(reason)` = refused.
    pub async fn check_url(&self, raw: &str) -> Result<(), String> {
        let resolver = Resolver::new(PER_PAGE_LOOKUPS, LOOKUP_TIMEOUT, Duration::ZERO);
        self.check_url_with(raw, &resolver, "check")
            .await
            .map_err(|r| r.reason)
    }

    /// [`Self::check_url`] with lookups made by `resolver` on behalf of
    /// `page` (its share of lookups, its cache).
    pub async fn check_url_with(
        &self,
        raw: &str,
        resolver: &Resolver,
        page: &str,
    ) -> Result<(), Refused> {
        let url = Url::parse(raw).map_err(|e| Refused::rule(format!("invalid URL ({e})")))?;
        match url.scheme() {
            "http" | "https" | "ws" | "wss" => {}
            "data" | "blob" | "about" => return Ok(()), // no network involved
            other => return Err(Refused::rule(format!("scheme {other}: is not allowed"))),
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let allowed = url.host_str().is_some_and(|h| self.allowed(h, port));
        let refuse = |ip: IpAddr| self.check_addr(ip, Some(port), allowed);
        match url.host() {
            Some(url::Host::Ipv4(ip)) => {
                refuse(IpAddr::V4(ip)).map_or(Ok(()), |r| Err(Refused::rule(r)))
            }
            Some(url::Host::Ipv6(ip)) => {
                refuse(IpAddr::V6(ip)).map_or(Ok(()), |r| Err(Refused::rule(r)))
            }
            Some(url::Host::Domain(name)) => {
                let addrs = resolver.resolve(page, name).await.map_err(Refused::dns)?;
                for ip in &addrs {
                    if let Some(why) = refuse(*ip) {
                        return Err(Refused::rule(format!("{name} resolves to {why}")));
                    }
                }
                Ok(())
            }
            None => Err(Refused::rule("URL has no host".to_owned())),
        }
    }

    /// Resolves `host` and refuses it if any of its addresses is refused.
    pub async fn check_host(&self, host: &str, port: u16) -> Result<(), String> {
        let allowed = self.allowed(host, port);
        let addrs = resolve(host, port).await?;
        for ip in &addrs {
            if let Some(why) = self.check_addr(*ip, Some(port), allowed) {
                return Err(format!("{host} resolves to {why}"));
            }
        }
        Ok(())
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub reason: String,
    /// The host name did not resolve in time: `Some(true)` when the page
    /// itself flooded the resolver, `Some(false)` when the resolver is slow
    /// or down (not the task's fault).
    pub dns_timeout: Option<bool>,
}

impl Refused {
    fn rule(reason: String) -> Self {
        Refused {
            reason,
            dns_timeout: None,
        }
    }

    fn dns(e: DnsError) -> Self {
        let dns_timeout = match &e {
            DnsError::Timeout { flooding, .. } => Some(*flooding),
            DnsError::NotFound(_) => None,
        };
        Refused {
            reason: e.to_string(),
            dns_timeout,
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Every address `host` resolves to (system resolver, bounded time).
pub async fn resolve(host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
    let lookup = tokio::net::lookup_host((host, port));
    match tokio::time::timeout(DNS_TIMEOUT, lookup).await {
        Ok(Ok(addrs)) => {
            let ips: Vec<IpAddr> = addrs.map(|a| a.ip()).collect();
            if ips.is_empty() {
                Err(format!("{host} does not resolve"))
            } else {
                Ok(ips)
            }
        }
        Ok(Err(e)) => Err(format!("{host} does not resolve ({e})")),
        Err(_) => Err(format!(
            "DNS lookup of {host} took longer than {DNS_TIMEOUT:?}"
        )),
    }
}

/// Whether a task may ask for a navigation to `raw` at all (the `goto`
/// action): only `http(s)` and `about:blank`. The address check follows in
/// the request interceptor.
pub fn check_navigation_scheme(raw: &str) -> Result<(), String> {
    let trimmed = raw.trim();
    if trimmed.eq_ignore_ascii_case("about:blank") {
        return Ok(());
    }
    let url = Url::parse(trimmed).map_err(|e| format!("invalid URL {trimmed:?} ({e})"))?;
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(format!(
            "scheme {other}: is not allowed for navigation (only http and https)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test ip")
    }

    #[test]
    fn metadata_and_link_local_are_always_blocked() {
        let p = Policy::default();
        for a in [
            "169.254.169.254",
            "169.254.0.1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
        ] {
            assert!(p.check_ip(ip(a)).is_some(), "{a} must be blocked");
        }
        let why = p.check_ip(ip("169.254.169.254")).expect("blocked");
        assert!(why.contains("169.254.0.0/16"), "{why}");
        assert!(why.contains("always blocked"), "{why}");
    }

    #[test]
    fn translated_forms_of_the_metadata_address_are_blocked() {
        let p = Policy::default();
        for a in [
            "64:ff9b::a9fe:a9fe",                   // NAT64 well-known prefix
            "64:ff9b::169.254.169.254",             // same, dotted
            "64:ff9b:1::a9fe:a9fe",                 // local-use NAT64, /96 layout
            "64:ff9b:1:a9fe:a9:fe00::",             // local-use NAT64, /48 layout
            "2002:a9fe:a9fe::1",                    // 6to4
            "2001:0:a9fe:a9fe::1",                  // Teredo server
            "2001:0:4136:e378:8000:63bf:5601:5601", // Teredo client 169.254.169.254 (inverted)
        ] {
            let why = p
                .check_ip(ip(a))
                .unwrap_or_else(|| panic!("{a} must be blocked"));
            assert!(why.contains("169.254"), "{a}: {why}");
        }
        // A public address behind NAT64 / 6to4 stays reachable.
        assert!(p.check_ip(ip("64:ff9b::808:808")).is_none());
        assert!(p.check_ip(ip("2002:808:808::1")).is_none());
        let closed = Policy::new(true, Vec::new());
        for a in ["64:ff9b::7f00:1", "2002:a00:1::1", "64:ff9b::a00:1"] {
            assert!(
                closed.check_ip(ip(a)).is_some(),
                "{a}: private behind a translator"
            );
        }
    }

    #[test]
    fn own_ports_are_refused_on_local_addresses_whatever_the_settings() {
        let p = Policy::new(false, Vec::new())
            .with_allow(parse_allow_list("127.0.0.1").expect("allow"));
        p.own_ports.add(9222, "DevTools");
        let clone = p.clone();
        for a in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            let why = clone
                .check_addr(ip(a), Some(9222), true)
                .unwrap_or_else(|| panic!("{a}:9222 must be refused"));
            assert!(why.contains("own DevTools port"), "{why}");
        }
        assert!(p.check_addr(ip("127.0.0.1"), Some(9223), false).is_none());
        // Another machine's port 9222 is none of our business.
        assert!(p.check_addr(ip("8.8.8.8"), Some(9222), false).is_none());
        p.own_ports.remove(9222);
        assert!(clone
            .check_addr(ip("127.0.0.1"), Some(9222), false)
            .is_none());
    }

    #[tokio::test]
    async fn allow_list_opens_private_hosts_but_not_metadata() {
        let list = parse_allow_list("127.0.0.1:8765, localhost, [::1]:80").expect("allow");
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].to_string(), "127.0.0.1:8765");
        assert_eq!(list[2].to_string(), "[::1]:80");
        assert!(parse_allow_list("http://x/").is_err());
        assert!(parse_allow_list("x:99999").is_err());
        let p = Policy::new(true, Vec::new()).with_allow(list);
        assert!(p
            .check_url("http://127.0.0.1:8765/index.html")
            .await
            .is_ok());
        let e = p
            .check_url("http://127.0.0.1:8766/")
            .await
            .expect_err("other port");
        assert!(e.contains("WEB_ALLOW_HOSTS"), "{e}");
        assert!(p.check_url("http://localhost:1/").await.is_ok());
        assert!(p.check_url("http://[::1]/").await.is_ok());
        assert!(p.check_url("http://169.254.169.254/").await.is_err());
        let meta = Policy::new(true, Vec::new())
            .with_allow(parse_allow_list("169.254.169.254").expect("allow"));
        assert!(meta.check_url("http://169.254.169.254/").await.is_err());
    }

    #[test]
    fn private_ranges_only_when_configured() {
        let open = Policy::default();
        let closed = Policy::new(true, Vec::new());
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "::1",
            "fd12::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(open.check_ip(ip(a)).is_none(), "{a} allowed by default");
            let why = closed.check_ip(ip(a)).expect("blocked when private");
            assert!(why.contains("WEB_BLOCK_PRIVATE"), "{why}");
        }
        for a in ["8.8.8.8", "172.32.0.1", "2001:4860::8888", "1.1.1.1"] {
            assert!(closed.check_ip(ip(a)).is_none(), "{a} is public");
        }
    }

    #[test]
    fn extra_blocks() {
        let p = Policy::new(
            false,
            parse_cidr_list("127.0.0.2/32, 10.9.0.0/16").expect("list"),
        );
        assert!(p.check_ip(ip("127.0.0.2")).is_some());
        assert!(p.check_ip(ip("127.0.0.1")).is_none());
        assert!(p.check_ip(ip("10.9.200.1")).is_some());
        assert!(parse_cidr_list("10.0.0.0/33").is_err());
        assert!(parse_cidr_list("nonsense").is_err());
        assert_eq!(parse_cidr_list("").expect("empty"), Vec::new());
        assert_eq!(
            "::1".parse::<Cidr>().expect("bare v6").to_string(),
            "::1/128"
        );
    }

    #[test]
    fn navigation_schemes() {
        assert!(check_navigation_scheme("http://example.com/").is_ok());
        assert!(check_navigation_scheme("about:blank").is_ok());
        for bad in [
            "file:///etc/passwd",
            "chrome://settings",
            "javascript:alert(1)",
            "data:text/html,hi",
            "view-source:http://x/",
        ] {
            let e = check_navigation_scheme(bad).expect_err(bad);
            assert!(e.contains("not allowed"), "{e}");
        }
    }

    #[tokio::test]
    async fn urls_are_checked_after_resolution() {
        let p = Policy::new(false, parse_cidr_list("127.0.0.2/32").expect("list"));
        assert!(p.check_url("http://127.0.0.1:8080/x").await.is_ok());
        assert!(p.check_url("http://127.0.0.2:8080/x").await.is_err());
        let e = p
            .check_url("http://169.254.169.254/latest/meta-data/")
            .await
            .expect_err("metadata");
        assert!(e.contains("169.254.0.0/16"), "{e}");
        assert!(p.check_url("http://[fd00:ec2::254]/").await.is_err());
        // "localhost" resolves through /etc/hosts: no packet leaves the host.
        let closed = Policy::new(true, Vec::new());
        let e = closed
            .check_url("http://localhost:1/")
            .await
            .expect_err("localhost");
        assert!(e.starts_with("localhost resolves to"), "{e}");
        assert!(p.check_url("file:///etc/passwd").await.is_err());
        assert!(p.check_url("data:text/plain,hi").await.is_ok());
        // Cached answers give the same verdicts.
        let dns = Resolver::default();
        for _ in 0..2 {
            assert!(closed
                .check_url_with("http://localhost:1/", &dns, "page")
                .await
                .is_err());
            assert!(p
                .check_url_with("http://localhost:1/", &dns, "page")
                .await
                .is_ok());
        }
    }
}
