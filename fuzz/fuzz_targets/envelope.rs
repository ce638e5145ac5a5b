//! The WebSocket frame parser: any text is a request or a 400 with a
//! sentence; a request's reply and error frames are valid JSON that echo
//! the id.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match hyve_proto::parse_request(text) {
        Ok(req) => {
            assert!(!req.head.namespace.trim().is_empty());
            assert!(!req.head.name.trim().is_empty());
            assert_eq!(req.route(), req.route().to_ascii_lowercase());
            let reply = hyve_proto::render_response(&req.head, req.args.clone());
            let v: serde_json::Value = serde_json::from_str(&reply).expect("a reply is JSON");
            assert_eq!(v["id"], req.head.id.clone().unwrap_or_default().as_str());
            // The iohyve arguments of any request parse or fail cleanly.
            let _ = hyve_proto::iohyve::parse(&req.args);
        }
        Err((id, err)) => {
            assert_eq!(err.code, hyve_proto::ErrorCode::BadRequest);
            let detail = err.detail.clone().expect("a 400 says why");
            assert!(!detail.is_empty());
            let frame = hyve_proto::render_error(id.as_deref(), &err);
            let _: serde_json::Value =
                serde_json::from_str(&frame).expect("an error frame is JSON");
        }
    }
});
