//! The order aggregate, event-sourced: its events, commands, errors and state.

use serde::{Deserialize, Serialize};
use tower_patterns::eventstore::{Aggregate, DomainEvent};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum OrderEvent {
    Placed {
        sku: String,
        qty: u32,
        /// The customer who placed it (the shard key).
        #[serde(default)]
        customer: String,
    },
    Paid {
        charge: String,
    },
    PaymentQueued,
    Cancelled {
        reason: String,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Placed { .. } => "Placed",
            Self::Paid { .. } => "Paid",
            Self::PaymentQueued => "PaymentQueued",
            Self::Cancelled { .. } => "Cancelled",
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum OrderCommand {
    Place {
        sku: String,
        qty: u32,
        customer: String,
    },
    /// The checkout saga's last step: paid, or the payment queued.
    Settle(OrderEvent),
    /// A queued payment went through once the provider was back.
    PayQueued { charge: String },
    /// The checkout saga's compensation of the order: a repeat changes nothing.
    Cancel { reason: String },
}

#[derive(Debug)]
pub(crate) enum OrderError {
    AlreadyPlaced,
    NotPlaced,
    Settled,
    NoQuantity,
}

impl OrderError {
    pub(crate) const fn phrase(&self) -> &'static str {
        match self {
            Self::AlreadyPlaced => "the order is already placed",
            Self::NotPlaced => "no such order",
            Self::Settled => "the order is already settled",
            Self::NoQuantity => "the quantity must be at least 1",
        }
    }
}

impl std::fmt::Display for OrderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.phrase())
    }
}

impl std::error::Error for OrderError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Status {
    Placed,
    Paid,
    PaymentQueued,
    Cancelled,
}

#[derive(Default, Serialize, Deserialize)]
pub(crate) struct Order {
    pub(crate) sku: Option<String>,
    pub(crate) qty: u32,
    pub(crate) status: Option<Status>,
}

impl Aggregate for Order {
    type Command = OrderCommand;
    type Event = OrderEvent;
    type Error = OrderError;

    fn handle(&self, command: &OrderCommand) -> Result<Vec<OrderEvent>, OrderError> {
        match command {
            OrderCommand::Place { .. } if self.sku.is_some() => Err(OrderError::AlreadyPlaced),
            OrderCommand::Place { qty: 0, .. } => Err(OrderError::NoQuantity),
            OrderCommand::Place { sku, qty, customer } => Ok(vec![OrderEvent::Placed {
                sku: sku.clone(),
                qty: *qty,
                customer: customer.clone(),
            }]),
            OrderCommand::Settle(_)
            | OrderCommand::PayQueued { .. }
            | OrderCommand::Cancel { .. }
                if self.sku.is_none() =>
            {
                Err(OrderError::NotPlaced)
            }
            OrderCommand::Settle(_) if self.status != Some(Status::Placed) => {
                Err(OrderError::Settled)
            }
            OrderCommand::Settle(event) => Ok(vec![event.clone()]),
            OrderCommand::PayQueued { .. } if self.status == Some(Status::Paid) => Ok(vec![]),
            OrderCommand::PayQueued { .. } if self.status != Some(Status::PaymentQueued) => {
                Err(OrderError::Settled)
            }
            OrderCommand::PayQueued { charge } => Ok(vec![OrderEvent::Paid {
                charge: charge.clone(),
            }]),
            OrderCommand::Cancel { .. } if self.status == Some(Status::Cancelled) => Ok(vec![]),
            OrderCommand::Cancel { .. } if self.status != Some(Status::Placed) => {
                Err(OrderError::Settled)
            }
            OrderCommand::Cancel { reason } => Ok(vec![OrderEvent::Cancelled {
                reason: reason.clone(),
            }]),
        }
    }

    fn apply(&mut self, event: &OrderEvent) {
        match event {
            OrderEvent::Placed { sku, qty, .. } => {
                self.sku = Some(sku.clone());
                self.qty = *qty;
                self.status = Some(Status::Placed);
            }
            OrderEvent::Paid { .. } => self.status = Some(Status::Paid),
            OrderEvent::PaymentQueued => self.status = Some(Status::PaymentQueued),
            OrderEvent::Cancelled { .. } => self.status = Some(Status::Cancelled),
        }
    }
}
