//! An effect elsewhere, checkpointed in a [`CheckpointStore`](crate::CheckpointStore):
//! at-least-once. (Skeleton.)
