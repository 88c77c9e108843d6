//! Metrics of the web runtime beyond CONTRACT §7 (registered in the shared
//! registry, so `/metrics` shows them next to the contract's).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts};

use adp_core::metrics::Metrics;

/// Browser-side metrics.
#[derive(Clone)]
pub struct WebMetrics {
    /// Pages (one per task) open now.
    pub pages_open: IntGauge,
    /// Highest `pages_open` seen since start.
    pub pages_peak: IntGauge,
    /// Chromium launches after the first (crash or hang recovery).
    pub browser_restarts: IntCounter,
    /// Requests refused by the destination policy, by kind (`navigation`, `subresource`).
    pub requests_blocked: IntCounterVec,
    /// Connections refused by the egress proxy.
    pub egress_refused: IntCounter,
    /// Pages closed that the runtime did not open (popups).
    pub targets_closed: IntCounter,
    peak: Arc<AtomicI64>,
}

impl WebMetrics {
    pub fn register(metrics: &Metrics) -> Self {
        let pages_open = IntGauge::new("web_pages_open", "Browser pages (one per task) open now.")
            .expect("valid metric");
        let pages_peak = IntGauge::new(
            "web_pages_peak",
            "Highest number of browser pages open at once since start.",
        )
        .expect("valid metric");
        let browser_restarts = IntCounter::new(
            "web_browser_restarts_total",
            "Chromium relaunches after a crash or hang.",
        )
        .expect("valid metric");
        let requests_blocked = IntCounterVec::new(
            Opts::new(
                "web_requests_blocked_total",
                "Browser requests refused by the destination policy.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let egress_refused = IntCounter::new(
            "web_egress_refused_total",
            "Connections refused by the egress proxy (destination blocked or unresolvable).",
        )
        .expect("valid metric");
        let targets_closed = IntCounter::new(
            "web_targets_closed_total",
            "Pages (popups, window.open) the runtime did not open, closed on sight.",
        )
        .expect("valid metric");
        for kind in ["navigation", "subresource"] {
            requests_blocked.with_label_values(&[kind]);
        }
        let r = &metrics.registry;
        // A second registration (two runtimes in one test process sharing a
        // registry) is harmless: the first series stays.
        let _ = r.register(Box::new(pages_open.clone()));
        let _ = r.register(Box::new(pages_peak.clone()));
        let _ = r.register(Box::new(browser_restarts.clone()));
        let _ = r.register(Box::new(requests_blocked.clone()));
        let _ = r.register(Box::new(egress_refused.clone()));
        let _ = r.register(Box::new(targets_closed.clone()));
        WebMetrics {
            pages_open,
            pages_peak,
            browser_restarts,
            requests_blocked,
            egress_refused,
            targets_closed,
            peak: Arc::new(AtomicI64::new(0)),
        }
    }

    /// One more page open; updates the peak.
    pub fn page_opened(&self) {
        self.pages_open.inc();
        let now = self.pages_open.get();
        let peak = self.peak.fetch_max(now, Ordering::SeqCst).max(now);
        self.pages_peak.set(peak);
    }

    pub fn page_closed(&self) {
        self.pages_open.dec();
    }
}
