//! The egress proxy: a SOCKS5 server on 127.0.0.1 that Chromium sends every
//! connection through (`--proxy-server=socks5://…`, loopback included). It
//! resolves the destination itself, refuses it if any of its addresses is
//! blocked by the [`Policy`], and connects to the address it checked.
//!
//! The `Fetch` interception ([`crate::intercept`]) judges each *request* and
//! gives the step its error message; this proxy judges each *connection*, so
//! a DNS answer that changes between the two (rebinding), a WebSocket (which
//! `Fetch` does not see) or any other socket Chromium opens cannot reach a
//! blocked address either.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::guard::Policy;
use crate::metrics::WebMetrics;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

// SOCKS5 reply codes (RFC 1928).
const REP_OK: u8 = 0;
const REP_FAILURE: u8 = 1;
const REP_NOT_ALLOWED: u8 = 2;
const REP_HOST_UNREACHABLE: u8 = 4;
const REP_REFUSED: u8 = 5;
const REP_COMMAND: u8 = 7;
const REP_ADDRESS_TYPE: u8 = 8;

/// The destinations (`host:port` as Chromium asked) of the last
/// connections the proxy was asked for, allowed or not. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Destinations(Arc<std::sync::Mutex<std::collections::VecDeque<String>>>);

/// Destinations a [`Destinations`] log keeps.
const DESTINATIONS_KEPT: usize = 1000;

impl Destinations {
    fn record(&self, dest: String) {
        if let Ok(mut d) = self.0.lock() {
            if d.len() >= DESTINATIONS_KEPT {
                d.pop_front();
            }
            d.push_back(dest);
        }
    }

    /// The destinations asked for, oldest first.
    pub fn list(&self) -> Vec<String> {
        self.0
            .lock()
            .map(|d| d.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// Starts the proxy on 127.0.0.1 (any free port); runs until `shutdown`.
/// Returns the `socks5://` URL to give Chromium.
pub async fn start(
    policy: Policy,
    metrics: WebMetrics,
    shutdown: CancellationToken,
) -> std::io::Result<String> {
    start_logged(policy, metrics, shutdown, Destinations::default()).await
}

/// The proxy's share of DNS lookups (names the request check did not
/// resolve a moment before: WebSockets, mostly).
const PROXY_LOOKUPS_KEY: &str = "egress";

/// [`start`], noting every destination asked for in `log`. Names are
/// resolved by the policy's [`crate::resolver::Resolver`], shared with the
/// request check: an answer that check judged a moment ago is reused (and
/// judged again here); other names (WebSockets, mostly) share one quota.
pub async fn start_logged(
    policy: Policy,
    metrics: WebMetrics,
    shutdown: CancellationToken,
    log: Destinations,
) -> std::io::Result<String> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    // A page must not chain through the proxy to the proxy (or to the
    // runtime's other ports).
    policy.own_ports.add(addr.port(), "egress proxy");
    let policy = Arc::new(policy);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.cancelled() => return,
            };
            match accepted {
                Ok((stream, _)) => {
                    let policy = policy.clone();
                    let metrics = metrics.clone();
                    let stop = shutdown.clone();
                    let log = log.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            _ = serve(stream, &policy, &metrics, &log) => {}
                            _ = stop.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Egress proxy accept failed.");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    tracing::info!(addr = %addr, "Egress proxy listening.");
    Ok(format!("socks5://{addr}"))
}

/// The destination of a CONNECT request.
enum Dest {
    Ip(IpAddr),
    Name(String),
}

async fn serve(mut client: TcpStream, policy: &Policy, metrics: &WebMetrics, log: &Destinations) {
    let _ = client.set_nodelay(true);
    let request = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut client)).await;
    let (dest, port) = match request {
        Ok(Ok(Ok(r))) => r,
        Ok(Ok(Err(code))) => {
            let _ = reply(&mut client, code).await;
            return;
        }
        Ok(Err(_)) | Err(_) => return,
    };
    let allowed = match &dest {
        Dest::Ip(ip) => {
            log.record(SocketAddr::new(*ip, port).to_string());
            policy.allowed(&ip.to_string(), port)
        }
        Dest::Name(name) => {
            log.record(format!("{name}:{port}"));
            policy.allowed(name, port)
        }
    };
    let (label, addrs) = match dest {
        Dest::Ip(ip) => (ip.to_string(), vec![ip]),
        Dest::Name(name) => match policy.resolver.resolve(PROXY_LOOKUPS_KEY, &name).await {
            Ok(a) => (name, a),
            Err(why) => {
                metrics.egress_refused.inc();
                tracing::info!(host = %name, reason = %why, "Egress refused: unresolvable.");
                let _ = reply(&mut client, REP_HOST_UNREACHABLE).await;
                return;
            }
        },
    };
    if let Some(why) = addrs
        .iter()
        .find_map(|ip| policy.check_addr(*ip, Some(port), allowed))
    {
        metrics.egress_refused.inc();
        tracing::info!(host = %label, port, reason = %why, "Egress refused by the destination policy.");
        let _ = reply(&mut client, REP_NOT_ALLOWED).await;
        return;
    }
    let mut upstream = None;
    for ip in &addrs {
        let target = SocketAddr::new(*ip, port);
        if let Ok(Ok(s)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            upstream = Some(s);
            break;
        }
    }
    let Some(mut upstream) = upstream else {
        let _ = reply(&mut client, REP_REFUSED).await;
        return;
    };
    let _ = upstream.set_nodelay(true);
    if reply(&mut client, REP_OK).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// Reads the greeting and the CONNECT request. `Ok(Err(code))`: answer with
/// that SOCKS error code.
async fn handshake(s: &mut TcpStream) -> std::io::Result<Result<(Dest, u16), u8>> {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await?;
    if head[0] != 5 {
        return Err(std::io::Error::other("not SOCKS5"));
    }
    let mut methods = vec![0u8; usize::from(head[1])];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&0) {
        s.write_all(&[5, 0xff]).await?;
        return Err(std::io::Error::other("no acceptable auth method"));
    }
    s.write_all(&[5, 0]).await?;
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await?;
    if req[0] != 5 {
        return Err(std::io::Error::other("not SOCKS5"));
    }
    let dest = match req[3] {
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await?;
            Dest::Ip(IpAddr::V4(Ipv4Addr::from(a)))
        }
        4 => {
            let mut a = [0u8; 16];
            s.read_exact(&mut a).await?;
            Dest::Ip(IpAddr::V6(Ipv6Addr::from(a)))
        }
        3 => {
            let mut len = [0u8; 1];
            s.read_exact(&mut len).await?;
            let mut name = vec![0u8; usize::from(len[0])];
            s.read_exact(&mut name).await?;
            let name = String::from_utf8_lossy(&name).into_owned();
            // A literal address sent as a name is judged as the address.
            match name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
            {
                Ok(ip) => Dest::Ip(ip),
                Err(_) => Dest::Name(name),
            }
        }
        _ => return Ok(Err(REP_ADDRESS_TYPE)),
    };
    let mut port = [0u8; 2];
    s.read_exact(&mut port).await?;
    if req[1] != 1 {
        // Only CONNECT: no BIND, no UDP ASSOCIATE.
        return Ok(Err(REP_COMMAND));
    }
    Ok(Ok((dest, u16::from_be_bytes(port))))
}

async fn reply(s: &mut TcpStream, code: u8) -> std::io::Result<()> {
    let code = if code == 0 || code <= REP_ADDRESS_TYPE {
        code
    } else {
        REP_FAILURE
    };
    s.write_all(&[5, code, 0, 1, 0, 0, 0, 0, 0, 0]).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::parse_cidr_list;

    async fn socks_connect(
        proxy: &str,
        host: &[u8],
        atyp: u8,
        port: u16,
    ) -> (u8, Option<TcpStream>) {
        let addr = proxy.trim_start_matches("socks5://");
        let mut s = TcpStream::connect(addr).await.expect("proxy up");
        s.write_all(&[5, 1, 0]).await.expect("greet");
        let mut r = [0u8; 2];
        s.read_exact(&mut r).await.expect("method");
        assert_eq!(r, [5, 0]);
        let mut req = vec![5, 1, 0, atyp];
        if atyp == 3 {
            req.push(host.len() as u8);
        }
        req.extend_from_slice(host);
        req.extend_from_slice(&port.to_be_bytes());
        s.write_all(&req).await.expect("request");
        let mut rep = [0u8; 10];
        s.read_exact(&mut rep).await.expect("reply");
        (rep[1], (rep[1] == 0).then_some(s))
    }

    #[tokio::test]
    async fn connects_allowed_and_refuses_blocked_destinations() {
        let registry = adp_core::metrics::Metrics::new();
        let metrics = WebMetrics::register(&registry);
        let stop = CancellationToken::new();
        let policy = Policy::new(false, parse_cidr_list("127.0.0.2/32").expect("cidr"));
        let proxy = start(policy, metrics.clone(), stop.clone())
            .await
            .expect("start");

        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = echo.local_addr().expect("addr").port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 5];
                    if s.read_exact(&mut b).await.is_ok() {
                        let _ = s.write_all(&b).await;
                    }
                });
            }
        });
        // Allowed, by address and by name.
        for (host, atyp) in [(&[127u8, 0, 0, 1][..], 1u8), (&b"localhost"[..], 3)] {
            let (code, s) = socks_connect(&proxy, host, atyp, port).await;
            assert_eq!(code, REP_OK);
            let mut s = s.expect("tunnel");
            s.write_all(b"hello").await.expect("send");
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.expect("echo");
            assert_eq!(&b, b"hello");
        }
        // Refused: the extra block, and the metadata address as a literal
        // name. Nothing is sent anywhere: the check comes before any connect.
        let (code, _) = socks_connect(&proxy, &[127, 0, 0, 2], 1, port).await;
        assert_eq!(code, REP_NOT_ALLOWED);
        let (code, _) = socks_connect(&proxy, b"169.254.169.254", 3, 80).await;
        assert_eq!(code, REP_NOT_ALLOWED);
        // The proxy's own port, by address and by name.
        let own = proxy
            .rsplit(':')
            .next()
            .and_then(|p| p.parse::<u16>().ok())
            .expect("port");
        let (code, _) = socks_connect(&proxy, &[127, 0, 0, 1], 1, own).await;
        assert_eq!(code, REP_NOT_ALLOWED);
        let (code, _) = socks_connect(&proxy, b"localhost", 3, own).await;
        assert_eq!(code, REP_NOT_ALLOWED);
        assert_eq!(metrics.egress_refused.get(), 4);
        stop.cancel();
    }
}
