//! The monitors of one connection: which devices this session monitors, MonitorStart and
//! MonitorStop, and the cross-reference ids the PBX's events carry. Which devices are wanted
//! across reconnects, and by whom, is the driver's registry, not this.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

use super::{Phase, Queued, Session, SessionEvent};
use crate::link::{RequestError, Stats};

/// One device's monitor on this connection.
pub(super) struct MonitorState {
    pub(super) xref: Option<Bytes>,
    /// A MonitorStart is queued or outstanding.
    starting: bool,
    /// Still wanted: a start answered after [`Session::unmonitor`] is stopped again.
    pub(super) wanted: bool,
}

impl Session {
    /// Monitor `device` on this connection. Returns true when it is monitored already (no event
    /// follows); otherwise [`SessionEvent::MonitorStarted`] or [`SessionEvent::MonitorFailed`]
    /// follows (not when the session is dead or lost first: the loss says it all).
    pub fn monitor(&mut self, now: Instant, device: &Arc<str>) -> bool {
        if let Some(m) = self.monitors.get_mut(device) {
            m.wanted = true;
            return m.xref.is_some();
        }
        match self.phase {
            Phase::Up => {}
            Phase::Dead => return false,
            Phase::Associating { .. } | Phase::Releasing { .. } => {
                self.events.push_back(SessionEvent::MonitorFailed { device: device.clone(), error: RequestError::LinkDown });
                return false;
            }
        }
        self.monitors.insert(device.clone(), MonitorState { xref: None, starting: true, wanted: true });
        self.queue.push_back(Queued::MonitorStart { device: device.clone() });
        self.pump(now);
        false
    }

    /// Stop monitoring `device` (a start in flight is stopped once the PBX answers it).
    pub fn unmonitor(&mut self, now: Instant, device: &str) {
        let Some(m) = self.monitors.get_mut(device) else { return };
        if m.starting {
            m.wanted = false;
            return;
        }
        if let Some((_, m)) = self.monitors.remove_entry(device) {
            if let Some(x) = m.xref {
                self.by_xref.remove(&x);
                self.stats.monitors.fetch_sub(1, Ordering::Relaxed);
                self.queue.push_back(Queued::MonitorStop { xref: x });
                self.pump(now);
            }
        }
    }

    /// The PBX answered a MonitorStart of ours (the crossRefIdentifier, or why not).
    pub(super) fn monitor_answered(&mut self, now: Instant, device: Arc<str>, outcome: Result<Bytes, RequestError>) {
        let wanted = self.monitors.get(&device).is_some_and(|m| m.wanted);
        match outcome {
            Ok(xref) if wanted => {
                if let Some(m) = self.monitors.get_mut(&device) {
                    m.starting = false;
                    if let Some(old) = m.xref.replace(xref.clone()) {
                        self.by_xref.remove(&old);
                    } else {
                        Stats::inc(&self.stats.monitors);
                    }
                }
                self.by_xref.insert(xref, device.clone());
                self.events.push_back(SessionEvent::MonitorStarted { device });
            }
            Ok(xref) => {
                // Every would-be subscriber left while it was starting: stop it again.
                self.monitors.remove(&device);
                self.queue.push_back(Queued::MonitorStop { xref });
                self.pump(now);
            }
            Err(error) => {
                self.monitors.remove(&device);
                if wanted {
                    self.events.push_back(SessionEvent::MonitorFailed { device, error });
                }
            }
        }
    }
}
