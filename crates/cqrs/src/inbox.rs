//! The inbox: drops a repeated delivery by event id, inside the effect's own transaction.
//! (Skeleton.)
