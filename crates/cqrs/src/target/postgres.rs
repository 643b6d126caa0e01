//! A read model in PostgreSQL, checkpointed in the same transaction, one runner per
//! projection across processes (an advisory-lock lease). (Skeleton.)
