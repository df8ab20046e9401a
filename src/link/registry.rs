//! The driver's registry: who wants which device's events and which port's answers, across
//! connections. A [`super::Session`] knows only the monitors of its own connection; what subscribers
//! and ports asked for outlives it here, so that after a reconnect the driver can start the same
//! monitors again and tell each subscriber of the loss and the restoration once.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::{Delivery, MonitorEvent, Reply, RequestError, Sink, Stats, Sub};
use crate::codec::apdu::EventReport;
use crate::codec::Body;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MonState {
    /// Not monitored on the current connection (none, or not restarted yet).
    Idle,
    Starting,
    Running,
}

struct DeviceEntry {
    state: MonState,
    subs: Vec<Sub>,
    waiting: Vec<(Sub, Reply)>,
}

pub(super) struct PortEntry {
    tx: mpsc::Sender<Delivery>,
    /// A slot kept for the next link notice, so that a port whose channel is full of events still
    /// learns that the link dropped.
    notice: Option<mpsc::OwnedPermit<Delivery>>,
    devices: Vec<Arc<str>>,
    told_lost: bool,
}

impl PortEntry {
    pub(super) fn new(tx: mpsc::Sender<Delivery>) -> PortEntry {
        let notice = tx.clone().try_reserve_owned().ok();
        PortEntry { tx, notice, devices: Vec::new(), told_lost: false }
    }
    fn notify(&mut self, d: Delivery) {
        match self.notice.take() {
            Some(p) => {
                p.send(d);
            }
            None => {
                let _ = self.tx.try_send(d);
            }
        }
        self.notice = self.tx.clone().try_reserve_owned().ok();
    }
    /// An event: only into the slots not kept for notices.
    fn event(&mut self, d: Delivery) -> Result<(), mpsc::error::TrySendError<Delivery>> {
        if self.notice.is_none() {
            self.notice = self.tx.clone().try_reserve_owned().ok();
        }
        self.tx.try_send(d)
    }
}

#[derive(Default)]
pub(super) struct Registry {
    devices: HashMap<Arc<str>, DeviceEntry>,
    pub(super) ports: HashMap<u64, PortEntry>,
}

/// What the session must do after a registry change.
pub(super) enum Need {
    Nothing,
    Start,
    Stop,
}

impl Registry {
    /// Add a subscriber: answered at once when the device is monitored on the current
    /// connection; otherwise it waits, and `Start` says the session must be asked.
    pub(super) fn subscribe(&mut self, device: &Arc<str>, sub: Sub, reply: Reply) -> Need {
        if matches!(sub.sink, Sink::Port) {
            let Some(p) = self.ports.get_mut(&sub.id) else {
                reply.deliver(Err(RequestError::Closed));
                return Need::Nothing;
            };
            if !p.devices.contains(device) {
                p.devices.push(device.clone());
            } else if let Some(e) = self.devices.get_mut(device) {
                // Already monitored through this port (or on its way): answered, events once.
                if e.state == MonState::Running {
                    reply.deliver(Ok(Body::null()));
                } else {
                    // Answered with the others; `started` does not add the port twice.
                    e.waiting.push((Sub { id: sub.id, sink: Sink::Port }, reply));
                }
                return Need::Nothing;
            }
        }
        let e = self.devices.entry(device.clone()).or_insert_with(|| DeviceEntry { state: MonState::Idle, subs: Vec::new(), waiting: Vec::new() });
        match e.state {
            MonState::Running => {
                reply.deliver(Ok(Body::null()));
                e.subs.push(sub);
                Need::Nothing
            }
            MonState::Starting => {
                e.waiting.push((sub, reply));
                Need::Nothing
            }
            MonState::Idle => {
                e.waiting.push((sub, reply));
                e.state = MonState::Starting;
                Need::Start
            }
        }
    }

    /// Remove a subscriber; `Stop` when it was the last.
    pub(super) fn unsubscribe(&mut self, device: &str, sub: u64) -> Need {
        if let Some(p) = self.ports.get_mut(&sub) {
            p.devices.retain(|d| &**d != device);
        }
        let Some(e) = self.devices.get_mut(device) else { return Need::Nothing };
        e.subs.retain(|s| s.id != sub);
        for (s, reply) in std::mem::take(&mut e.waiting) {
            if s.id == sub {
                reply.deliver(Err(RequestError::Closed));
            } else {
                e.waiting.push((s, reply));
            }
        }
        if !e.subs.is_empty() || !e.waiting.is_empty() {
            return Need::Nothing;
        }
        let was = e.state;
        self.devices.remove(device);
        if was == MonState::Idle { Need::Nothing } else { Need::Stop }
    }

    /// The session monitors `device`. Returns `Stop` when nobody wants it any more.
    pub(super) fn started(&mut self, device: &Arc<str>) -> Need {
        let Some(e) = self.devices.get_mut(device) else { return Need::Stop };
        let restored = e.state != MonState::Running;
        e.state = MonState::Running;
        if restored {
            // Existing subscribers are re-attached after a reconnect.
            for s in &e.subs {
                if let Sink::Channel(tx) = &s.sink {
                    let _ = tx.try_send(MonitorEvent::LinkRestored);
                }
            }
        }
        for (sub, reply) in std::mem::take(&mut e.waiting) {
            if reply.is_closed() {
                continue;
            }
            let already = matches!(sub.sink, Sink::Port) && e.subs.iter().any(|s| s.id == sub.id);
            reply.deliver(Ok(Body::null()));
            if !already {
                e.subs.push(sub);
            }
        }
        if e.subs.is_empty() {
            self.devices.remove(device);
            return Need::Stop;
        }
        Need::Nothing
    }

    pub(super) fn start_failed(&mut self, device: &Arc<str>, err: &RequestError) {
        let Some(e) = self.devices.remove(device) else { return };
        for (_, reply) in e.waiting {
            reply.deliver(Err(err.clone()));
        }
        for s in e.subs {
            match s.sink {
                Sink::Channel(tx) => {
                    let _ = tx.try_send(MonitorEvent::MonitorFailed(Box::new(err.clone())));
                }
                Sink::Port => {
                    if let Some(p) = self.ports.get_mut(&s.id) {
                        p.devices.retain(|d| d != device);
                        let _ = p.tx.try_send(Delivery::MonitorFailed { device: device.clone(), error: err.clone() });
                    }
                }
            }
        }
    }

    /// Deliver an event to the device's subscribers. Returns the devices nobody wants any more
    /// (a port found closed here is detached).
    pub(super) fn route(&mut self, device: &Arc<str>, report: Arc<EventReport>, stats: &Stats) -> Vec<Arc<str>> {
        let Some(e) = self.devices.get_mut(device) else { return Vec::new() };
        let mut closed_ports = Vec::new();
        e.subs.retain(|s| match &s.sink {
            Sink::Channel(tx) => !tx.is_closed(),
            Sink::Port => true,
        });
        for s in &e.subs {
            match &s.sink {
                Sink::Channel(tx) => {
                    if tx.try_send(MonitorEvent::Event(report.clone())).is_err() {
                        Stats::inc(&stats.events_dropped);
                    }
                }
                Sink::Port => {
                    let Some(p) = self.ports.get_mut(&s.id) else { continue };
                    match p.event(Delivery::Event { device: device.clone(), report: report.clone() }) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => Stats::inc(&stats.events_dropped),
                        Err(mpsc::error::TrySendError::Closed(_)) => closed_ports.push(s.id),
                    }
                }
            }
        }
        closed_ports.into_iter().flat_map(|id| self.detach(id)).collect()
    }

    /// The late result of a request `port` made with `tag` (see [`Delivery::LateResult`]): into
    /// the slots not kept for notices, like an event.
    pub(super) fn late(&mut self, port: u64, tag: u64, result: Body) {
        let Some(p) = self.ports.get_mut(&port) else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = p.event(Delivery::LateResult { tag, result }) {
            warn!(tag, "a late result is dropped: the port's channel is full");
        }
    }

    /// A port is gone: its monitors are released. Returns the devices nobody wants any more.
    pub(super) fn detach(&mut self, port: u64) -> Vec<Arc<str>> {
        let Some(p) = self.ports.remove(&port) else { return Vec::new() };
        let mut stop = Vec::new();
        for d in p.devices {
            if let Need::Stop = self.unsubscribe(&d, port) {
                stop.push(d);
            }
        }
        stop
    }

    /// A connection that came up is gone: every monitor is void, waiting subscribers fail,
    /// subscribers and ports hear of it once.
    pub(super) fn link_lost(&mut self, was_up: bool) {
        let closed: Vec<u64> = self.ports.iter().filter(|(_, p)| p.tx.is_closed()).map(|(id, _)| *id).collect();
        for id in closed {
            self.detach(id);
        }
        self.devices.retain(|_, e| {
            for (_, reply) in std::mem::take(&mut e.waiting) {
                reply.deliver(Err(RequestError::LinkDown));
            }
            e.state = MonState::Idle;
            if was_up {
                e.subs.retain(|s| match &s.sink {
                    Sink::Channel(tx) => tx.try_send(MonitorEvent::LinkLost).is_ok() || !tx.is_closed(),
                    Sink::Port => true,
                });
            }
            !e.subs.is_empty()
        });
        if was_up {
            for p in self.ports.values_mut() {
                p.notify(Delivery::LinkLost);
                p.told_lost = true;
            }
        }
        // A port's devices whose entries went are not monitored through it any more.
        let devices = &self.devices;
        for p in self.ports.values_mut() {
            p.devices.retain(|d| devices.contains_key(d));
        }
    }

    /// A new connection is up: the ports told of the loss hear of the restoration; the devices
    /// with subscribers are to be monitored again.
    pub(super) fn restore(&mut self) -> Vec<Arc<str>> {
        for p in self.ports.values_mut() {
            if std::mem::take(&mut p.told_lost) {
                p.notify(Delivery::LinkRestored);
            }
        }
        self.devices
            .iter_mut()
            .filter(|(_, e)| !e.subs.is_empty() && e.state == MonState::Idle)
            .map(|(d, e)| {
                e.state = MonState::Starting;
                d.clone()
            })
            .collect()
    }
}
