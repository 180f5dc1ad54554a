//! Worker events, both halves: the worker's [`EventSink`] that sends them,
//! and the host's [`EventHub`] where `EVENT` frames go once they arrive.
//!
//! The sink writes through an [`Outlet`], the seam the serve loop's
//! connection implements, so that events know nothing of the server.

mod hub;
mod sink;

pub use self::hub::Subscription;
pub(crate) use self::hub::{Credit, EventHub};
pub use self::sink::EventSink;
pub(crate) use self::sink::{Gone, Outlet};
