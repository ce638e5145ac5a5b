//! Event frames pushed to subscribers (PROTOCOL.md section 4).

use serde_json::Value;

/// Renders an event frame:
/// `{"args":<payload>,"id":"none","name":<event>,"namespace":"events"}`.
pub fn render_event(event: &str, payload: &Value) -> String {
    crate::envelope::frame(&crate::envelope::to_json(payload), "none", event, "events")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_shape() {
        assert_eq!(
            render_event("dispatcher", &json!({"state": "pending"})),
            r#"{"args":{"state":"pending"},"id":"none","name":"dispatcher","namespace":"events"}"#
        );
    }
}
