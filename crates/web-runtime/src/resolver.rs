//! The DNS lookups the destination checks make, bounded so that one page
//! cannot starve the others.
//!
//! The system resolver (`getaddrinfo`, as Chromium would use) runs on
//! tokio's blocking threads. Unbounded, a page that fires 1,500 `fetch`es
//! at slow-resolving names filled the blocking pool (515 threads) and a
//! concurrent task's `goto` failed. Here:
//!
//! * at most [`GLOBAL_LOOKUPS`] lookups run at once in the whole runtime;
//! * each page has at most `per_page` lookups in flight (its others wait
//!   in its own queue), and a lookup holds its permits until the system
//!   call returns — so a page's stuck lookups occupy at most its own share;
//! * answers are reused for 10 s, failures (no such name, timeouts) for a
//!   short [`NEGATIVE_TTL`];
//! * a lookup that does not finish within the timeout (its wait in the
//!   page's queue included) says whose fault that is: the page's own
//!   ([`DnsError::Timeout`] with `flooding: true`) when it had more lookups
//!   pending than its share, else the resolver's (`flooding: false`, an
//!   infrastructure failure: the task is retried, not failed).

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

/// Lookups running at once in the whole runtime, at most.
pub const GLOBAL_LOOKUPS: usize = 32;
/// Lookups of one page in flight at once, at most.
pub const PER_PAGE_LOOKUPS: usize = 4;
/// How long a failed lookup is remembered.
pub const NEGATIVE_TTL: Duration = Duration::from_secs(3);
/// How long an answer is reused.
pub const POSITIVE_TTL: Duration = Duration::from_secs(10);
/// How long one lookup may take, waiting in its page's queue included.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Entries the cache keeps at most (it is emptied when full).
const CACHE_MAX: usize = 4096;

/// Why a name gave no addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The resolver answered: no such name (or no address).
    NotFound(String),
    /// No answer in time. `flooding`: the page asking had more lookups
    /// pending than its share (its own doing); otherwise the resolver is
    /// slow or down (not the task's fault).
    Timeout { flooding: bool, message: String },
}

impl std::fmt::Display for DnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DnsError::NotFound(m) | DnsError::Timeout { message: m, .. } => f.write_str(m),
        }
    }
}

type Answer = Result<Vec<IpAddr>, DnsError>;

struct PageSlot {
    permits: Arc<Semaphore>,
    pending: AtomicUsize,
}

struct Inner {
    global: Arc<Semaphore>,
    per_page: usize,
    timeout: Duration,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, Answer)>>,
    pages: Mutex<HashMap<String, Arc<PageSlot>>>,
}

/// The runtime's bounded resolver. Cheap to clone.
#[derive(Clone)]
pub struct Resolver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("per_page", &self.inner.per_page)
            .field("timeout", &self.inner.timeout)
            .finish()
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new(PER_PAGE_LOOKUPS, LOOKUP_TIMEOUT, POSITIVE_TTL)
    }
}

/// Takes one off a page's pending count when the lookup ends, and forgets
/// the page once nothing of it is pending.
struct Pending<'a> {
    resolver: &'a Inner,
    page: &'a str,
    slot: Arc<PageSlot>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Ok(mut pages) = self.resolver.pages.lock() {
            if self.slot.pending.fetch_sub(1, Ordering::SeqCst) == 1 {
                pages.remove(self.page);
            }
        }
    }
}

impl Resolver {
    /// `ttl` zero: answers are not reused (failures still are, briefly).
    pub fn new(per_page: usize, timeout: Duration, ttl: Duration) -> Self {
        Resolver {
            inner: Arc::new(Inner {
                global: Arc::new(Semaphore::new(GLOBAL_LOOKUPS)),
                per_page: per_page.max(1),
                timeout,
                ttl,
                cache: Mutex::new(HashMap::new()),
                pages: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Every address `host` resolves to, asked on behalf of `page` (any
    /// key: a page's main frame id, "egress", ...).
    pub async fn resolve(&self, page: &str, host: &str) -> Answer {
        let key = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some(answer) = self.cached(&key) {
            return answer;
        }
        let answer = self.lookup(page, &key).await;
        if let Ok(mut c) = self.inner.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(key, (Instant::now(), answer.clone()));
        }
        answer
    }

    /// Lookups pending now (queued or running), all pages together.
    pub fn pending(&self) -> usize {
        self.inner
            .pages
            .lock()
            .map(|p| p.values().map(|s| s.pending.load(Ordering::SeqCst)).sum())
            .unwrap_or(0)
    }

    fn cached(&self, key: &str) -> Option<Answer> {
        let c = self.inner.cache.lock().ok()?;
        let (at, answer) = c.get(key)?;
        let ttl = if answer.is_ok() {
            self.inner.ttl
        } else {
            NEGATIVE_TTL
        };
        (at.elapsed() < ttl).then(|| answer.clone())
    }

    async fn lookup(&self, page: &str, host: &str) -> Answer {
        let inner = &*self.inner;
        let deadline = tokio::time::Instant::now() + inner.timeout;
        let slot = {
            let mut pages = inner.pages.lock().map_err(|_| {
                DnsError::NotFound(format!("{host} does not resolve (resolver state poisoned)"))
            })?;
            let slot = pages
                .entry(page.to_owned())
                .or_insert_with(|| {
                    Arc::new(PageSlot {
                        permits: Arc::new(Semaphore::new(inner.per_page)),
                        pending: AtomicUsize::new(0),
                    })
                })
                .clone();
            let queued = slot.pending.fetch_add(1, Ordering::SeqCst) + 1;
            (slot, queued)
        };
        let (slot, queued) = slot;
        let pending = Pending {
            resolver: inner,
            page,
            slot: slot.clone(),
        };
        let flood_message = |what: &str| {
            DnsError::Timeout {
            flooding: true,
            message: format!(
                "DNS lookup of {host} {what}: this page had {} DNS lookups pending, {} at once at most",
                queued.max(pending.slot.pending.load(Ordering::SeqCst)),
                inner.per_page
            ),
        }
        };
        let Ok(Ok(page_permit)) =
            tokio::time::timeout_at(deadline, slot.permits.clone().acquire_owned()).await
        else {
            return Err(flood_message(&format!(
                "waited {:?} in the page's queue",
                inner.timeout
            )));
        };
        let Ok(Ok(global_permit)) =
            tokio::time::timeout_at(deadline, inner.global.clone().acquire_owned()).await
        else {
            return Err(DnsError::Timeout {
                flooding: false,
                message: format!(
                    "DNS lookup of {host}: all {GLOBAL_LOOKUPS} of the runtime's lookups stayed busy for {:?}",
                    inner.timeout
                ),
            });
        };
        let name = host.to_owned();
        let job = tokio::task::spawn_blocking(move || {
            // The permits go when the system call returns, not when we stop
            // waiting for it: a stuck lookup keeps its place.
            let _held = (page_permit, global_permit);
            (name.as_str(), 0u16)
                .to_socket_addrs()
                .map(|a| a.map(|s| s.ip()).collect::<Vec<_>>())
        });
        match tokio::time::timeout_at(deadline, job).await {
            Ok(Ok(Ok(ips))) if !ips.is_empty() => Ok(ips),
            Ok(Ok(Ok(_))) => Err(DnsError::NotFound(format!("{host} does not resolve"))),
            Ok(Ok(Err(e))) => Err(DnsError::NotFound(format!("{host} does not resolve ({e})"))),
            Ok(Err(e)) => Err(DnsError::NotFound(format!(
                "{host} does not resolve (lookup failed: {e})"
            ))),
            Err(_) => {
                let flooding = pending.slot.pending.load(Ordering::SeqCst) > inner.per_page;
                if flooding {
                    Err(flood_message(&format!(
                        "took longer than {:?}",
                        inner.timeout
                    )))
                } else {
                    Err(DnsError::Timeout {
                        flooding: false,
                        message: format!(
                            "DNS lookup of {host} took longer than {:?} (the resolver is slow or down)",
                            inner.timeout
                        ),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_caches_and_forgets_idle_pages() {
        let r = Resolver::default();
        let a = r.resolve("p1", "localhost").await.expect("localhost");
        assert!(a.iter().any(|ip| ip.is_loopback()), "{a:?}");
        // Served from the cache (same answer) and case-insensitive.
        assert_eq!(r.resolve("p2", "LOCALHOST.").await.expect("cached"), a);
        // (No lookup of an unknown name: it would ask the host's DNS server.)
        assert!(r.inner.pages.lock().expect("pages").is_empty());
    }
}
