//! What the server knows about the peer of a request: one per WebSocket
//! connection, one per REST request.

use std::net::SocketAddr;

use axum::extract::ws::Message;
use tokio::sync::mpsc;

use crate::api::events::SessionEvents;

/// The transport a session came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    WebSocket,
    Rest,
}

pub struct Session {
    pub peer: SocketAddr,
    pub transport: Transport,
    /// Frames to push to a WebSocket peer outside of replies (events);
    /// `None` for REST.
    pub push: Option<mpsc::Sender<Message>>,
    /// The connection's event subscription (`events/subscribe`).
    pub events: SessionEvents,
}

impl Session {
    pub fn websocket(peer: SocketAddr, push: mpsc::Sender<Message>) -> Session {
        Session {
            peer,
            transport: Transport::WebSocket,
            push: Some(push),
            events: SessionEvents::default(),
        }
    }

    pub fn rest(peer: SocketAddr) -> Session {
        Session {
            peer,
            transport: Transport::Rest,
            push: None,
            events: SessionEvents::default(),
        }
    }
}
