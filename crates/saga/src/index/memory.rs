//! The index in memory.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
};

use tower_patterns_core::BoxError;

use super::{Claim, IndexEntry, SagaIndex, status_word};
use crate::{SagaId, SagaStatus};

#[derive(Debug)]
struct Row {
    saga_type: String,
    status: &'static str,
    owner: Option<String>,
    lease_until: u64,
    updated: u64,
}

/// A [`SagaIndex`] in memory: for tests and for sagas that need not outlive the process.
/// Cloning shares it.
#[derive(Clone, Debug, Default)]
pub struct MemoryIndex {
    rows: Arc<Mutex<HashMap<SagaId, Row>>>,
}

impl MemoryIndex {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    fn rows(&self) -> std::sync::MutexGuard<'_, HashMap<SagaId, Row>> {
        self.rows.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl SagaIndex for MemoryIndex {
    async fn register(
        &self,
        id: &SagaId,
        saga_type: &str,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<bool, BoxError> {
        let mut rows = self.rows();
        if rows.contains_key(id) {
            return Ok(false);
        }
        rows.insert(
            id.clone(),
            Row {
                saga_type: saga_type.to_owned(),
                status: "open",
                owner: Some(owner.to_owned()),
                lease_until,
                updated: now,
            },
        );
        Ok(true)
    }

    async fn claim(
        &self,
        owner: &str,
        now: u64,
        lease_until: u64,
        max: usize,
        reclaim_own: bool,
    ) -> Result<Vec<Claim>, BoxError> {
        let mut rows = self.rows();
        let mut due: Vec<_> = rows
            .iter()
            .filter(|(_, r)| {
                r.status == "open"
                    && (r.lease_until <= now || (reclaim_own && r.owner.as_deref() == Some(owner)))
            })
            .map(|(id, r)| (r.lease_until, id.clone()))
            .collect();
        due.sort();
        due.truncate(max);
        Ok(due
            .into_iter()
            .filter_map(|(_, id)| {
                let row = rows.get_mut(&id)?;
                let previous = row.owner.replace(owner.to_owned());
                row.lease_until = lease_until;
                Some(Claim {
                    id,
                    previous_owner: previous.filter(|p| p != owner),
                })
            })
            .collect())
    }

    async fn claim_one(
        &self,
        id: &SagaId,
        owner: &str,
        now: u64,
        lease_until: u64,
    ) -> Result<Option<Claim>, BoxError> {
        let mut rows = self.rows();
        let Some(row) = rows.get_mut(id) else {
            return Ok(None);
        };
        let free = row.lease_until <= now || row.owner.as_deref() == Some(owner);
        if !(matches!(row.status, "open" | "stuck") && free) {
            return Ok(None);
        }
        let previous = row.owner.replace(owner.to_owned());
        row.lease_until = lease_until;
        Ok(Some(Claim {
            id: id.clone(),
            previous_owner: previous.filter(|p| p != owner),
        }))
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[SagaId],
        _now: u64,
        lease_until: u64,
    ) -> Result<Vec<SagaId>, BoxError> {
        let mut rows = self.rows();
        Ok(ids
            .iter()
            .filter(|id| {
                rows.get_mut(*id).is_some_and(|r| {
                    let held = r.status == "open" && r.owner.as_deref() == Some(owner);
                    if held {
                        r.lease_until = lease_until;
                    }
                    held
                })
            })
            .cloned()
            .collect())
    }

    async fn set_status(&self, id: &SagaId, status: SagaStatus, now: u64) -> Result<(), BoxError> {
        if let Some(row) = self.rows().get_mut(id) {
            row.status = status_word(status);
            row.updated = now;
            if row.status != "open" {
                row.owner = None;
                row.lease_until = 0;
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &SagaId) -> Result<(), BoxError> {
        self.rows().remove(id);
        Ok(())
    }

    async fn release(&self, id: &SagaId, owner: &str) -> Result<(), BoxError> {
        if let Some(row) = self.rows().get_mut(id)
            && row.owner.as_deref() == Some(owner)
        {
            row.lease_until = 0;
        }
        Ok(())
    }

    async fn list(&self, status: &str, max: usize) -> Result<Vec<IndexEntry>, BoxError> {
        let rows = self.rows();
        let mut found: Vec<_> = rows
            .iter()
            .filter(|(_, r)| r.status == status)
            .map(|(id, r)| IndexEntry {
                id: id.clone(),
                saga_type: r.saga_type.clone(),
                status: r.status.to_owned(),
                owner: r.owner.clone(),
                updated_ms: r.updated,
            })
            .collect();
        found.sort_by(|a, b| (a.updated_ms, &a.id).cmp(&(b.updated_ms, &b.id)));
        found.truncate(max);
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn conforms() {
        super::super::conformance::check(&super::MemoryIndex::new()).await;
    }
}
