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

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::time::{Duration, Instant};

use url::Url;

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

/// The destination rules of one runtime.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `WEB_BLOCK_PRIVATE`: refuse loopback and private ranges too.
    pub block_private: bool,
    /// `WEB_BLOCK_EXTRA`: more blocks refused always.
    pub extra: Vec<Cidr>,
}

impl Policy {
    pub fn new(block_private: bool, extra: Vec<Cidr>) -> Self {
        Policy {
            block_private,
            extra,
        }
    }

    /// Why `ip` is refused, or `None` when it may be reached.
    pub fn check_ip(&self, ip: IpAddr) -> Option<String> {
        // An IPv4 address in IPv6 clothing (::ffff:a.b.c.d, ::a.b.c.d) is
        // judged as the IPv4 address it is.
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .or_else(|| {
                    let s = v6.segments();
                    (s[..6] == [0; 6] && !(s[6] == 0 && s[7] <= 1))
                        .then(|| IpAddr::V4(Ipv4Addr::from(u128::from(v6) as u32)))
                })
                .unwrap_or(ip),
            v4 => v4,
        };
        if let Some((_, why)) = ALWAYS_BLOCKED.iter().find(|(c, _)| c.contains(ip)) {
            return Some(format!("{ip} is in the {why} (always blocked)"));
        }
        if let Some(c) = self.extra.iter().find(|c| c.contains(ip)) {
            return Some(format!("{ip} is in {c} (blocked by WEB_BLOCK_EXTRA)"));
        }
        if self.block_private {
            if let Some((_, why)) = PRIVATE.iter().find(|(c, _)| c.contains(ip)) {
                return Some(format!(
                    "{ip} is in the {why} (blocked by WEB_BLOCK_PRIVATE=true)"
                ));
            }
        }
        None
    }

    /// Checks a URL about to be loaded: scheme, then every address its host
    /// resolves to. `Ok(())` = allowed; `Err(reason)` = refused.
    pub async fn check_url(&self, raw: &str) -> Result<(), String> {
        self.check_url_with(raw, &DnsCache::off()).await
    }

    /// [`Self::check_url`] with lookups answered from `dns` while fresh.
    pub async fn check_url_with(&self, raw: &str, dns: &DnsCache) -> Result<(), String> {
        let url = Url::parse(raw).map_err(|e| format!("invalid URL ({e})"))?;
        match url.scheme() {
            "http" | "https" | "ws" | "wss" => {}
            "data" | "blob" | "about" => return Ok(()), // no network involved
            other => return Err(format!("scheme {other}: is not allowed")),
        }
        let port = url.port_or_known_default().unwrap_or(80);
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)).map_or(Ok(()), Err),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)).map_or(Ok(()), Err),
            Some(url::Host::Domain(name)) => {
                let addrs = dns.resolve(name, port).await?;
                for ip in &addrs {
                    if let Some(why) = self.check_ip(*ip) {
                        return Err(format!("{name} resolves to {why}"));
                    }
                }
                Ok(())
            }
            None => Err("URL has no host".to_owned()),
        }
    }

    /// Resolves `host` and refuses it if any of its addresses is refused.
    pub async fn check_host(&self, host: &str, port: u16) -> Result<(), String> {
        let addrs = resolve(host, port).await?;
        for ip in &addrs {
            if let Some(why) = self.check_ip(*ip) {
                return Err(format!("{host} resolves to {why}"));
            }
        }
        Ok(())
    }
}

/// Recent DNS answers, so that a page with a hundred requests to one host
/// does not cost a hundred lookups. Only the request check uses it; the
/// egress proxy resolves afresh for every connection it makes.
#[derive(Debug, Clone)]
pub struct DnsCache {
    ttl: Duration,
    entries: std::sync::Arc<std::sync::Mutex<HashMap<(String, u16), DnsAnswer>>>,
}

/// When a lookup was made, and what it said.
type DnsAnswer = (Instant, Result<Vec<IpAddr>, String>);

/// Entries a [`DnsCache`] keeps at most (it is emptied when full).
const DNS_CACHE_MAX: usize = 4096;

impl DnsCache {
    pub fn new(ttl: Duration) -> Self {
        DnsCache {
            ttl,
            entries: Default::default(),
        }
    }

    /// No caching.
    pub fn off() -> Self {
        Self::new(Duration::ZERO)
    }

    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<IpAddr>, String> {
        if self.ttl.is_zero() {
            return resolve(host, port).await;
        }
        let key = (host.to_ascii_lowercase(), port);
        if let Ok(m) = self.entries.lock() {
            if let Some((at, answer)) = m.get(&key) {
                if at.elapsed() < self.ttl {
                    return answer.clone();
                }
            }
        }
        let answer = resolve(host, port).await;
        if let Ok(mut m) = self.entries.lock() {
            if m.len() >= DNS_CACHE_MAX {
                m.clear();
            }
            m.insert(key, (Instant::now(), answer.clone()));
        }
        answer
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
        let dns = DnsCache::new(Duration::from_secs(10));
        for _ in 0..2 {
            assert!(closed
                .check_url_with("http://localhost:1/", &dns)
                .await
                .is_err());
            assert!(p.check_url_with("http://localhost:1/", &dns).await.is_ok());
        }
    }
}
