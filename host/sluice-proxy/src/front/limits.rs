//! Admission of monitor connections: at most `server.max_connections` open at once, and at most
//! `server.max_connections_per_peer` from one peer address.
//!
//! A connection over either cap is still answered - with an HTTP/2 GOAWAY right after the
//! handshake - so that its client sees why; those answers are themselves bounded
//! ([`MAX_REFUSALS_IN_FLIGHT`]), and past that a refused connection is simply closed. This module
//! only counts connections; serving them is the front's job.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use parking_lot::Mutex;

/// Refused connections being answered with GOAWAY at once; more are closed without an answer,
/// so a connection flood cannot make Sluice do unbounded handshakes.
pub(crate) const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// Which cap refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `server.max_connections`.
    Total(usize),
    /// `server.max_connections_per_peer`.
    PerPeer(usize),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Total(cap) => {
                write!(f, "{cap} monitor connections open (server.max_connections)")
            }
            Refusal::PerPeer(cap) => write!(
                f,
                "{cap} connections open from this peer (server.max_connections_per_peer)"
            ),
        }
    }
}

/// The monitor connections open now, in total and per peer address.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    max_total: usize,
    max_per_peer: usize,
    /// Open connections per peer; an address leaves the map with its last connection, so the
    /// map never holds more than `max_total` entries.
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    refusing: AtomicUsize,
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    peer: IpAddr,
}

/// One refused connection being answered; dropping it frees the answer's place.
#[derive(Debug)]
pub(crate) struct RefusalSlot {
    limits: Arc<ConnectionLimits>,
}

impl ConnectionLimits {
    /// Limits of `max_total` connections, `max_per_peer` from one address.
    pub(crate) fn new(max_total: usize, max_per_peer: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_peer,
            open: Mutex::new((0, HashMap::new())),
            refusing: AtomicUsize::new(0),
        })
    }

    /// Admits a connection from `peer`, or says which cap it is over.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<ConnectionSlot, Refusal> {
        let mut open = self.open.lock();
        let (total, per_peer) = &mut *open;
        if *total >= self.max_total {
            return Err(Refusal::Total(self.max_total));
        }
        let from_peer = per_peer.entry(peer).or_insert(0);
        if *from_peer >= self.max_per_peer {
            return Err(Refusal::PerPeer(self.max_per_peer));
        }
        *from_peer += 1;
        *total += 1;
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            peer,
        })
    }

    /// A place to answer a refused connection with GOAWAY, if fewer than
    /// [`MAX_REFUSALS_IN_FLIGHT`] are being answered.
    pub(crate) fn refusal_slot(self: &Arc<Self>) -> Option<RefusalSlot> {
        let taken = self.refusing.fetch_add(1, Relaxed);
        if taken >= MAX_REFUSALS_IN_FLIGHT {
            self.refusing.fetch_sub(1, Relaxed);
            return None;
        }
        Some(RefusalSlot {
            limits: Arc::clone(self),
        })
    }

    /// Connections open now.
    #[cfg(test)]
    fn open(&self) -> usize {
        self.open.lock().0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut open = self.limits.open.lock();
        let (total, per_peer) = &mut *open;
        *total = total.saturating_sub(1);
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

impl Drop for RefusalSlot {
    fn drop(&mut self) {
        self.limits.refusing.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn caps_hold_per_peer_and_in_total_and_free_on_drop() {
        let limits = ConnectionLimits::new(3, 2);
        let a1 = limits.admit(ip(1)).unwrap();
        let _a2 = limits.admit(ip(1)).unwrap();
        assert_eq!(limits.admit(ip(1)).unwrap_err(), Refusal::PerPeer(2));
        let _b1 = limits.admit(ip(2)).unwrap();
        assert_eq!(limits.admit(ip(3)).unwrap_err(), Refusal::Total(3));
        drop(a1);
        assert_eq!(limits.open(), 2);
        let _a3 = limits.admit(ip(1)).unwrap();
        assert!(
            Refusal::Total(3)
                .to_string()
                .contains("server.max_connections")
        );
    }

    #[test]
    fn a_peer_leaves_the_map_with_its_last_connection() {
        let limits = ConnectionLimits::new(10, 10);
        let slots: Vec<_> = (1..=5).map(|i| limits.admit(ip(i)).unwrap()).collect();
        assert_eq!(limits.open.lock().1.len(), 5);
        drop(slots);
        assert_eq!(limits.open.lock().1.len(), 0);
        assert_eq!(limits.open(), 0);
    }

    #[test]
    fn refusal_answers_are_bounded() {
        let limits = ConnectionLimits::new(1, 1);
        let slots: Vec<_> = (0..MAX_REFUSALS_IN_FLIGHT)
            .map(|_| limits.refusal_slot().expect("a place"))
            .collect();
        assert!(limits.refusal_slot().is_none());
        drop(slots);
        assert!(limits.refusal_slot().is_some());
    }
}
