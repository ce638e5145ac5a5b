//! The hyve engine: what a VM manager does, with no HTTP in sight.
//!
//! The server maps each request to one call here. The engine validates every
//! input ([`validate`]), keeps an in-memory inventory of guests for fast
//! reads, and changes the host through a [`store::Store`] (guests, disks,
//! ISOs, setup state). Background work (ISO downloads) runs as [`tasks`]
//! and is announced on the [`events`] bus.

pub mod engine;
pub mod error;
pub mod events;
pub mod fetch;
pub mod fsutil;
pub mod keyed_lock;
pub mod props;
pub mod size;
pub mod store;
pub mod tasks;
pub mod validate;
pub mod vmm;

pub use engine::{Engine, VmSummary, VERSION};
pub use error::{Error, ErrorKind, Result};
pub use size::Size;
pub use validate::Limits;
pub use vmm::{Boot, Vmm, VmmConfig};
