//! The SysAdm wire protocol as hyve speaks it, with no I/O.
//!
//! Everything a transport needs to turn bytes into a request and a result back
//! into bytes lives here: the envelope (`{"namespace","name","id","args"}`),
//! reply and error frames, event frames, and the typed requests of the
//! `sysadm/iohyve` class. Keeping it free of sockets and files makes it easy to
//! test exhaustively and to fuzz.
//!
//! Replies are serialized compactly with object keys in alphabetical order, as
//! the original SysAdm server did: `serde_json::Value` keeps its maps sorted
//! (the workspace never enables serde_json's `preserve_order`; a test below
//! fails if some dependency does).

pub mod envelope;
pub mod events;
pub mod iohyve;

pub use envelope::{
    parse_request, render_error, render_response, render_response_json, ErrorCode, ProtocolError,
    Request, RequestHead,
};
pub use events::render_event;
