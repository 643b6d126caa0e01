//! An effect elsewhere, checkpointed in a [`CheckpointStore`](crate::CheckpointStore):
//! at-least-once.
//!
//! Each event of a batch is applied in turn; after the batch (or the events before a failing
//! one) the checkpoint moves by compare-and-set. A crash between an effect and the checkpoint
//! applies the effect again on restart, so the effect drops repeats itself (an
//! [`Inbox`](crate::inbox), or idempotent writes).
//!
//! A rebuild has no fresh tables to fill here: it replays the log from the start into the
//! same effect (under the checkpoint `name#rebuild`), then the live checkpoint takes the
//! rebuild's; effects must be idempotent for that too. The swap is two compare-and-set
//! writes, the live checkpoint first: once it lands the swap is made, and a crash before
//! the second (the rebuild's row reset) leaves a row that the next start discards.

use std::fmt;

use tower_patterns_eventstore::{GlobalPosition, RecordedEvent};

use super::{Applied, Slot, Stored, Target};
use crate::{
    checkpoint::{Checkpoint, CheckpointStore},
    projection::{ApplyError, ExternalProjection, NoTarget, ProjectionBuilder, ProjectionError},
};

/// The target of an external projection: set with [`ProjectionBuilder::external`].
pub struct ExternalTarget<C, P> {
    checkpoints: C,
    effect: P,
}

impl<C, P> fmt::Debug for ExternalTarget<C, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalTarget").finish_non_exhaustive()
    }
}

impl<Src> ProjectionBuilder<Src, NoTarget> {
    /// Applies events to `effect` (a search service, a cache, a bus), keeping the checkpoint
    /// in `checkpoints`: at-least-once delivery (see [`ExternalProjection`]).
    pub fn external<C: CheckpointStore, P: ExternalProjection>(
        self,
        checkpoints: C,
        effect: P,
    ) -> ProjectionBuilder<Src, ExternalTarget<C, P>> {
        self.with_target(ExternalTarget {
            checkpoints,
            effect,
        })
    }
}

fn fenced(slot: &Slot) -> ProjectionError {
    ProjectionError::Fenced {
        projection: slot.checkpoint.clone(),
    }
}

fn checkpoint(slot: &Slot, position: GlobalPosition) -> Checkpoint {
    Checkpoint {
        position,
        version: slot.tables.version(),
    }
}

impl<C: CheckpointStore, P: ExternalProjection> ExternalTarget<C, P> {
    /// The stored checkpoint, `default` standing for none.
    async fn load(&self, name: &str) -> Result<Checkpoint, ProjectionError> {
        Ok(self
            .checkpoints
            .load(name)
            .await
            .map_err(ProjectionError::Database)?
            .unwrap_or_default())
    }

    async fn save(
        &self,
        slot: &Slot,
        expected: Checkpoint,
        new: Checkpoint,
    ) -> Result<(), ProjectionError> {
        let saved = self
            .checkpoints
            .save(&slot.checkpoint, expected, new)
            .await
            .map_err(ProjectionError::Database)?;
        if saved { Ok(()) } else { Err(fenced(slot)) }
    }
}

impl<C: CheckpointStore, P: ExternalProjection> Target for ExternalTarget<C, P> {
    async fn acquire(&mut self, _name: &str) -> Result<(), ProjectionError> {
        Ok(())
    }

    async fn open(&mut self, slot: &Slot) -> Result<Stored, ProjectionError> {
        let stored = self.load(&slot.checkpoint).await?;
        if stored != Checkpoint::default() {
            return Ok(Stored {
                position: stored.position,
                version: stored.version,
            });
        }
        let new = checkpoint(slot, GlobalPosition::START);
        self.save(slot, stored, new).await?;
        Ok(Stored {
            position: new.position,
            version: new.version,
        })
    }

    async fn apply(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        events: &[RecordedEvent],
    ) -> Result<Applied, ProjectionError> {
        let mut count = 0;
        let mut failed = None;
        for event in events {
            match self.effect.apply(event).await {
                Ok(()) => count += 1,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if count > 0 {
            let new = checkpoint(slot, events[count - 1].position);
            self.save(slot, checkpoint(slot, expected), new).await?;
        }
        Ok(Applied { count, failed })
    }

    async fn dead_letter(
        &mut self,
        slot: &Slot,
        expected: GlobalPosition,
        event: &RecordedEvent,
        error: &ApplyError,
        attempts: u32,
    ) -> Result<(), ProjectionError> {
        let saved = self
            .checkpoints
            .dead_letter(
                &slot.checkpoint,
                event,
                &error.to_string(),
                attempts,
                checkpoint(slot, expected),
                checkpoint(slot, event.position),
            )
            .await
            .map_err(ProjectionError::Database)?;
        if saved { Ok(()) } else { Err(fenced(slot)) }
    }

    async fn swap(&mut self, live: &Slot, rebuilt: &Slot) -> Result<(), ProjectionError> {
        let l = self.load(&live.checkpoint).await?;
        let r = self.load(&rebuilt.checkpoint).await?;
        if l.position != r.position {
            return Err(fenced(live));
        }
        // The swap is made by this write; the next one only tidies (see the module docs), so
        // its failure leaves a row for the next start or rebuild to discard.
        self.save(live, l, r).await?;
        if let Err(e) = self.save(rebuilt, r, Checkpoint::default()).await {
            tracing::warn!(
                target: "tower_patterns::cqrs",
                projection = %live.checkpoint,
                error = %e,
                "rebuild swapped in; its checkpoint row is left for the next start to discard"
            );
        }
        Ok(())
    }

    async fn discard(&mut self, slot: &Slot) -> Result<(), ProjectionError> {
        let stored = self.load(&slot.checkpoint).await?;
        if stored == Checkpoint::default() {
            return Ok(());
        }
        self.save(slot, stored, Checkpoint::default()).await
    }
}
