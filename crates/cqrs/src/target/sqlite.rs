//! A read model in SQLite, checkpointed in the same transaction. (Skeleton.)
