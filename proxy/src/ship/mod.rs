//! Shipping to PostgreSQL: batches into the inbox exactly once, and waiting for the apply worker.

pub mod backoff;
pub mod barrier;
pub mod flusher;
pub mod inbox;

pub use backoff::Backoff;
pub use barrier::{Barrier, BarrierError};
pub use flusher::{
    plan, BatchSource, BatchTable, EncodedBatch, FlushSchedule, FlushSettings, Flusher,
    PendingTable, Plan, ShipProgress, Uniform,
};
pub use inbox::{Delivery, InboxShipper, ShipError};
