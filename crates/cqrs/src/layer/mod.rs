//! The CQRS layer: commands to the write side, queries to the read side. (Skeleton.)
