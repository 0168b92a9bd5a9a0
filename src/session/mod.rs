//! Sessions at run time: the registry of live rooms, each room pairing one agent and one customer,
//! sequencing their events and keeping the event log that makes resume possible.

mod close;
pub mod cluster;
mod registry;
mod room;
pub mod view;

pub use close::CloseSignal;
pub use registry::Registry;
pub use room::{CloseSpec, ConnHandle, Joined, Room, RoomError, Routed, close_code};
