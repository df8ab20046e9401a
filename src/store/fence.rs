//! The fence of the PostgreSQL store's write batches with `[cluster]` (several gateways on one
//! database): which PBXs this instance owns, with their lease epochs. The lease shell
//! ([`crate::cluster`]) sets them; the store puts them in each write batch; the database refuses
//! a batch whose epoch is not the live one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// The epochs of the PBXs this instance owns, shared by the lease shell (which sets them) and
/// the PostgreSQL store (which puts them in each write batch, [`crate::store::PostgresStore`]):
/// every write for a PBX carries the epoch, and the database refuses the batch unless it is the
/// live one. A refused epoch is handed back to the shell, which drops the PBX.
#[derive(Clone)]
pub struct Fence {
    owner: String,
    epochs: Arc<Mutex<HashMap<String, i64>>>,
    refused: tokio::sync::mpsc::Sender<(String, i64)>,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence").field("owner", &self.owner).finish_non_exhaustive()
    }
}

/// A write for a PBX this instance does not own (or no longer): refused before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotOwned(pub String);

impl Fence {
    /// The fence of instance `owner`, and where its refusals arrive (bounded: the shell also
    /// finds a lost lease at its next renewal, so a refusal dropped when full is not lost).
    pub fn new(owner: &str) -> (Fence, tokio::sync::mpsc::Receiver<(String, i64)>) {
        let (refused, rx) = tokio::sync::mpsc::channel(64);
        (Fence { owner: owner.to_owned(), epochs: Arc::default(), refused }, rx)
    }

    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// `pbx` is owned with `epoch` from now (`Some`), or no longer (`None`).
    pub fn set(&self, pbx: &str, epoch: Option<i64>) {
        let mut m = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        match epoch {
            Some(e) => m.insert(pbx.to_owned(), e),
            None => m.remove(pbx),
        };
    }

    /// The epochs of `pbxs`, each once, for a batch's fence.
    ///
    /// # Errors
    /// One of them is not owned here.
    pub fn epochs<'a>(&self, pbxs: impl IntoIterator<Item = &'a str>) -> Result<Vec<(String, i64)>, NotOwned> {
        let m = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(String, i64)> = Vec::new();
        for p in pbxs {
            if out.iter().any(|(q, _)| q == p) {
                continue;
            }
            match m.get(p) {
                Some(e) => out.push((p.to_owned(), *e)),
                None => return Err(NotOwned(p.to_owned())),
            }
        }
        Ok(out)
    }

    /// The database refused a batch fenced with `pbx`'s `epoch`: forget it, tell the shell.
    pub fn refused(&self, pbx: &str, epoch: i64) {
        let mut m = self.epochs.lock().unwrap_or_else(PoisonError::into_inner);
        if m.get(pbx) == Some(&epoch) {
            m.remove(pbx);
        }
        drop(m);
        let _ = self.refused.try_send((pbx.to_owned(), epoch));
    }
}
