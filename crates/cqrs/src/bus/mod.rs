//! The event bus: in process for one node, NATS JetStream through a transactional outbox for
//! many. (Skeleton.)
