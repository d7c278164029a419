//! Port health monitoring: utilisation and error rate per managed port, with hysteresis.
//! The daemon feeds a [`Monitor`] one [`Observation`] per port per sample; it answers
//! which alerts were raised or cleared, and the findings of those that stand.

use std::collections::{BTreeMap, VecDeque};

use serde::Serialize;

use crate::Protocol;
use crate::findings::{Finding, RuleId, Severity};

/// Consecutive samples over (or under) a threshold before an alert is raised (or cleared).
pub const ALERT_SAMPLES: u32 = 3;

/// The window of the error rate, in seconds.
pub const ERROR_WINDOW_SECS: i64 = 300;

/// Samples of established connections kept per port (the dashboard's sparkline).
pub const HISTORY: usize = 60;

/// A managed port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortKey {
    /// The service it belongs to.
    pub service: String,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its number.
    pub port: u16,
}

impl std::fmt::Display for PortKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{} ({})", self.port, self.protocol, self.service)
    }
}

/// What one sample saw of a port.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Observation {
    /// Established connections.
    pub established: u64,
    /// Connections waiting in the accept queue.
    pub accept_queue: u64,
    /// The accept queue's limit (0: no listener).
    pub backlog: u64,
    /// The service's `max_conn`, if it declares one.
    pub max_conn: Option<u32>,
    /// Health probes made this sample.
    pub probes: u32,
    /// Of those, how many failed (refused, reset, timed out).
    pub probe_errors: u32,
}

impl Observation {
    /// The larger of connections over `max_conn` and the accept queue over its backlog;
    /// `None` when neither has a limit to count against.
    pub fn utilisation(&self) -> Option<f64> {
        let conns = self
            .max_conn
            .map(|m| self.established as f64 / f64::from(m.max(1)));
        let queue = (self.backlog > 0).then(|| self.accept_queue as f64 / self.backlog as f64);
        match (conns, queue) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The thresholds, from `[compliance]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Utilisation at or above this is over.
    pub utilisation: f64,
    /// An error rate above this is over.
    pub error_rate: f64,
}

/// An alert with hysteresis: it changes state only after [`ALERT_SAMPLES`] samples in a
/// row say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Alarm {
    /// Whether the alert stands.
    pub raised: bool,
    /// Samples in a row that disagree with `raised`.
    pub streak: u32,
}

impl Alarm {
    /// One sample: `Some(true)` when this raised it, `Some(false)` when it cleared it.
    pub fn step(&mut self, over: bool) -> Option<bool> {
        if over == self.raised {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < ALERT_SAMPLES {
            return None;
        }
        self.raised = over;
        self.streak = 0;
        Some(over)
    }
}

/// One raise or clear.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertChange {
    /// Which alert.
    pub rule: RuleId,
    /// Of which port.
    pub port: PortKey,
    /// Raised (true) or cleared.
    pub raised: bool,
    /// The value that decided it.
    pub value: f64,
    /// The threshold it was held against.
    pub threshold: f64,
}

/// How grave an alert is: a filling port is medium, a port that fails its clients high.
pub fn alert_severity(rule: RuleId) -> Severity {
    match rule {
        RuleId::PortErrorRateHigh => Severity::High,
        _ => Severity::Medium,
    }
}

impl AlertChange {
    /// A line for the ledger and the log.
    pub fn describe(&self) -> String {
        let what = match self.rule {
            RuleId::PortErrorRateHigh => "error rate",
            _ => "utilisation",
        };
        format!(
            "{what} {:.1} % {} the {:.1} % alert for {ALERT_SAMPLES} samples",
            self.value * 100.0,
            if self.raised {
                "reached"
            } else {
                "stayed under"
            },
            self.threshold * 100.0
        )
    }
}

/// What the monitor keeps of one port.
#[derive(Debug, Clone, Default)]
pub struct PortState {
    /// `port-utilisation-high`.
    pub utilisation: Alarm,
    /// `port-error-rate-high`.
    pub errors: Alarm,
    /// (time, probes, failures) of the samples in the error window.
    window: VecDeque<(i64, u32, u32)>,
    /// The last sample's utilisation.
    pub last_utilisation: Option<f64>,
    /// The error rate in the window at the last sample.
    pub last_error_rate: Option<f64>,
    /// Established connections of the last [`HISTORY`] samples, oldest first.
    pub recent: VecDeque<u64>,
}

impl PortState {
    /// Failed probes over probes in the window; `None` before any probe.
    pub fn error_rate(&self) -> Option<f64> {
        let (n, e) = self.window.iter().fold((0u64, 0u64), |(n, e), w| {
            (n + u64::from(w.1), e + u64::from(w.2))
        });
        (n > 0).then(|| e as f64 / n as f64)
    }
}

/// Every managed port's alerts.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    ports: BTreeMap<PortKey, PortState>,
}

impl Monitor {
    /// Feeds one sample of every managed port at `now`. A port no longer managed is
    /// forgotten, its raised alerts cleared.
    pub fn observe(
        &mut self,
        now: i64,
        seen: &[(PortKey, Observation)],
        t: Thresholds,
    ) -> Vec<AlertChange> {
        let mut out = Vec::new();
        let keep: std::collections::BTreeSet<&PortKey> = seen.iter().map(|(k, _)| k).collect();
        self.ports.retain(|k, st| {
            if keep.contains(k) {
                return true;
            }
            for (rule, a, v, th) in [
                (
                    RuleId::PortUtilisationHigh,
                    st.utilisation,
                    st.last_utilisation,
                    t.utilisation,
                ),
                (
                    RuleId::PortErrorRateHigh,
                    st.errors,
                    st.last_error_rate,
                    t.error_rate,
                ),
            ] {
                if a.raised {
                    out.push(AlertChange {
                        rule,
                        port: k.clone(),
                        raised: false,
                        value: v.unwrap_or(0.0),
                        threshold: th,
                    });
                }
            }
            false
        });
        for (k, o) in seen {
            let st = self.ports.entry(k.clone()).or_default();
            st.window.push_back((now, o.probes, o.probe_errors));
            while st
                .window
                .front()
                .is_some_and(|w| w.0 <= now - ERROR_WINDOW_SECS)
            {
                st.window.pop_front();
            }
            if st.recent.len() == HISTORY {
                st.recent.pop_front();
            }
            st.recent.push_back(o.established);
            let util = o.utilisation();
            st.last_utilisation = util;
            let rate = st.error_rate();
            st.last_error_rate = rate;
            let over = util.is_some_and(|u| u >= t.utilisation);
            if let Some(raised) = st.utilisation.step(over) {
                out.push(AlertChange {
                    rule: RuleId::PortUtilisationHigh,
                    port: k.clone(),
                    raised,
                    value: util.unwrap_or(0.0),
                    threshold: t.utilisation,
                });
            }
            let over = rate.is_some_and(|r| r > t.error_rate);
            if let Some(raised) = st.errors.step(over) {
                out.push(AlertChange {
                    rule: RuleId::PortErrorRateHigh,
                    port: k.clone(),
                    raised,
                    value: rate.unwrap_or(0.0),
                    threshold: t.error_rate,
                });
            }
        }
        out
    }

    /// One port's state.
    pub fn port(&self, k: &PortKey) -> Option<&PortState> {
        self.ports.get(k)
    }

    /// The findings of the alerts that stand.
    pub fn findings(&self, t: Thresholds) -> Vec<Finding> {
        let mut out = Vec::new();
        for (k, st) in &self.ports {
            if st.utilisation.raised {
                out.push(Finding {
                    id: RuleId::PortUtilisationHigh,
                    severity: alert_severity(RuleId::PortUtilisationHigh),
                    subject: format!("port {k}"),
                    evidence: format!(
                        "utilisation {:.1} % (alert at {:.1} %) for {ALERT_SAMPLES} samples or more",
                        st.last_utilisation.unwrap_or(0.0) * 100.0,
                        t.utilisation * 100.0
                    ),
                    why: "near its connection limit or with a filling accept queue, the next clients wait or are refused".into(),
                    remedy: "add capacity (another node behind the balancer, a larger max_conn or listen backlog) or move clients to another mirror".into(),
                });
            }
            if st.errors.raised {
                out.push(Finding {
                    id: RuleId::PortErrorRateHigh,
                    severity: alert_severity(RuleId::PortErrorRateHigh),
                    subject: format!("port {k}"),
                    evidence: format!(
                        "{:.1} % of health probes failed in the last {} minutes (alert above {:.1} %)",
                        st.last_error_rate.unwrap_or(0.0) * 100.0,
                        ERROR_WINDOW_SECS / 60,
                        t.error_rate * 100.0
                    ),
                    why: "clients of this port are being refused, reset or left waiting".into(),
                    remedy: "see whether the service is overloaded or restarting (`portwarden who PORT`, its logs) and whether its accept queue overflows".into(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PortKey {
        PortKey {
            service: "rsync".into(),
            protocol: Protocol::Tcp,
            port: 873,
        }
    }

    const T: Thresholds = Thresholds {
        utilisation: 0.70,
        error_rate: 0.01,
    };

    fn obs(established: u64, probes: u32, errors: u32) -> Observation {
        Observation {
            established,
            accept_queue: 0,
            backlog: 128,
            max_conn: Some(100),
            probes,
            probe_errors: errors,
        }
    }

    #[test]
    fn utilisation_is_the_larger_limit_used() {
        let mut o = obs(50, 0, 0);
        assert_eq!(o.utilisation(), Some(0.5));
        o.accept_queue = 96;
        assert_eq!(o.utilisation(), Some(0.75));
        o.max_conn = None;
        assert_eq!(o.utilisation(), Some(0.75));
        o.backlog = 0;
        assert_eq!(o.utilisation(), None);
    }

    #[test]
    fn an_alert_is_raised_and_cleared_only_after_samples_in_a_row() {
        let mut m = Monitor::default();
        let k = key();
        let mut t = 0;
        let mut feed = |m: &mut Monitor, est| {
            t += 10;
            m.observe(t, &[(k.clone(), obs(est, 1, 0))], T)
        };
        assert!(feed(&mut m, 90).is_empty());
        assert!(feed(&mut m, 30).is_empty(), "a dip resets the streak");
        assert!(feed(&mut m, 90).is_empty());
        assert!(
            feed(&mut m, 70).is_empty(),
            "70 % is at the threshold: over"
        );
        let c = feed(&mut m, 95);
        assert_eq!(c.len(), 1);
        assert!(c[0].raised && c[0].rule == RuleId::PortUtilisationHigh);
        assert_eq!(m.findings(T).len(), 1);
        assert!(feed(&mut m, 10).is_empty());
        assert!(feed(&mut m, 10).is_empty());
        let c = feed(&mut m, 10);
        assert!(!c[0].raised, "{c:?}");
        assert!(m.findings(T).is_empty());
    }

    #[test]
    fn the_error_rate_counts_a_five_minute_window() {
        let mut m = Monitor::default();
        let k = key();
        // One failure in 50 probes: 2 %, over 1 %.
        let mut changes = Vec::new();
        for i in 0..5 {
            let errs = u32::from(i == 0);
            changes.extend(m.observe(i * 10, &[(k.clone(), obs(0, 10, errs))], T));
        }
        assert_eq!(changes.len(), 1, "{changes:?}");
        assert_eq!(changes[0].rule, RuleId::PortErrorRateHigh);
        assert!((m.port(&k).unwrap().error_rate().unwrap() - 0.02).abs() < 1e-9);
        // Clean probes: the failure leaves the window five minutes on, and only then.
        let mut cleared = Vec::new();
        for t in (50..=330).step_by(10) {
            cleared.extend(m.observe(t, &[(k.clone(), obs(0, 10, 0))], T));
        }
        assert_eq!(cleared.len(), 1);
        assert!(!cleared[0].raised);
        // 1 in 100 is not above 1 % (however long it stands).
        let mut m = Monitor::default();
        for i in 0..15 {
            let c = m.observe(i, &[(k.clone(), obs(0, 10, u32::from(i == 9)))], T);
            assert!(c.is_empty(), "{c:?}");
        }
    }

    #[test]
    fn the_history_keeps_the_last_samples() {
        let mut m = Monitor::default();
        for t in 0..(HISTORY as i64 + 5) {
            m.observe(t, &[(key(), obs(t as u64, 0, 0))], T);
        }
        let r = &m.port(&key()).unwrap().recent;
        assert_eq!(r.len(), HISTORY);
        assert_eq!((r[0], r[HISTORY - 1]), (5, HISTORY as u64 + 4));
    }

    #[test]
    fn a_port_no_longer_managed_clears_its_alerts() {
        let mut m = Monitor::default();
        for t in 0..3 {
            m.observe(t, &[(key(), obs(99, 0, 0))], T);
        }
        assert_eq!(m.findings(T).len(), 1);
        let c = m.observe(4, &[], T);
        assert_eq!(c.len(), 1);
        assert!(!c[0].raised);
        assert!(m.findings(T).is_empty());
    }
}
