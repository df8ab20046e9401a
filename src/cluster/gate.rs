//! The link gate of `cstagate run` with `[cluster]`: a PBX's CSTA link runs only while this
//! instance owns the PBX's lease. The lease shell's changes arrive here in order; each becomes a
//! reconfiguration of the gateway ([`crate::gateway::Reconfigure`]), the path a reload takes:
//! a PBX gained gets its link (and the engine acts for it) and the associations its previous
//! owner left in flight there end `gateway_restarted`, their proof calls cleared; a PBX lost has its associations in
//! flight ended (`pbx_removed`: committed while the lease still lives, when it was handed back),
//! their calls cleared through the link, and the link released (RLRQ). A PBX lost otherwise
//! (not renewed in time, refused, fenced) has its link released first, at once.

use std::collections::HashMap;

use tokio::sync::mpsc;
use tracing::warn;

use super::lease::{Change, LostWhy};
use super::shell::GateEvent;
use crate::association::Policy;
use crate::config::LinkProfile;
use crate::gateway::{Gateway, Query, Reconfigure};
use crate::link::{Link, LinkState};

/// Adoptions of a PBX taken over tried while the store cannot be read, [`ADOPT_RETRY`] apart.
const ADOPT_TRIES: usize = 10;
const ADOPT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Run the gate until the shell stops: `profiles` by PBX, `policies` as configured.
pub async fn run(gateway: Gateway, profiles: HashMap<String, LinkProfile>, policies: HashMap<String, Policy>, mut events: mpsc::Receiver<GateEvent>) {
    let mut closing: Option<Link> = None;
    while let Some(GateEvent { change, done }) = events.recv().await {
        let mut adopt = None;
        let change = match change {
            Change::Gained { pbx, .. } => {
                let Some(profile) = profiles.get(&pbx) else { continue };
                adopt = Some(pbx.clone());
                Reconfigure { policies: policies.clone(), links: vec![(pbx, Link::spawn(profile.clone()))], removed: Vec::new() }
            }
            Change::Lost { pbx, why, .. } => {
                closing = gateway.links().get(&pbx).cloned();
                if why != LostWhy::Released {
                    // Not handed back: the lease is expiring (the database unreachable) or gone.
                    // The link closes first, directly, whatever the actor is waiting on (a commit
                    // to an unreachable database may take its whole timeout); the associations'
                    // ends below will not reach the database then, so the new owner ends them
                    // and clears their calls (their ids are stored).
                    if let Some(link) = &closing {
                        link.shutdown().await;
                    }
                }
                Reconfigure { policies: policies.clone(), links: Vec::new(), removed: vec![pbx] }
            }
        };
        if gateway.reconfigure(change).await.is_err() {
            warn!("the gateway stopped: PBX ownership no longer applied");
            return;
        }
        // Taken over: what the previous owner (dead, or paused and fenced) left in flight there
        // ends `gateway_restarted`, its proof calls cleared through the new link.
        // The PBX is served (requests for it decided here) only once adopted: until then they
        // are refused with 503. A store that cannot be read is tried again, a few times.
        if let Some(pbx) = adopt {
            let mut served = false;
            for _ in 0..ADOPT_TRIES {
                match gateway.adopt(&pbx).await {
                    Ok(true) => {
                        served = true;
                        break;
                    }
                    Ok(false) => tokio::time::sleep(ADOPT_RETRY).await,
                    Err(_) => return,
                }
            }
            if !served {
                warn!(pbx = %pbx, "PBX taken over but not adopted (the store cannot be read): its requests are refused until it is taken over again");
            }
        }
        // A round trip through the actor after the reconfiguration: its batch (the ends of the
        // lost PBX's associations) is committed by the time this answers.
        let _ = gateway.query(Query::Sizes).await;
        // The old link released (RLRQ answered, or the connection closed): only then may the
        // lease go to another instance. (The shell bounds this wait.)
        if let Some(link) = closing.take() {
            link.wait_for(|s| matches!(s, LinkState::Closed)).await;
        }
        let _ = done.send(());
    }
}
