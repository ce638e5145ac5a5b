//! Each iohyve action's arguments, as the server takes them: the class's
//! parser, then every engine check the action's values go through (names,
//! sizes, disks, property values, URLs, digests). Nothing panics, errors
//! are short sentences, and whatever is accepted is safe to use as a file
//! or device name.
#![no_main]

use hyve_engine::{props, validate, Limits};
use hyve_proto::iohyve::{self, IohyveRequest, ParseError};
use libfuzzer_sys::fuzz_target;

/// The longest error sentence any check may give (values are quoted cut
/// short; the longest fixed sentences list the settable properties).
const MAX_ERROR: usize = 600;

fn short<T>(r: Result<T, String>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert!(e.len() <= MAX_ERROR, "a {} byte error: {e:.200}", e.len());
            None
        }
    }
}

/// What every accepted name must be: no path, no option, no oddity.
fn safe(name: &str) {
    assert!(!name.is_empty() && name.len() <= 200);
    assert!(!name.contains('/') && !name.contains("..") && !name.contains('\0'));
    assert!(!name.starts_with('-') && !name.starts_with('.'));
    assert!(name.bytes().all(|b| b.is_ascii_graphic()));
}

fn guest(n: &str) {
    if short(validate::guest_name(n)).is_some() {
        safe(n);
    }
}

fn iso(n: &str) {
    if short(validate::iso_name(n)).is_some() {
        safe(n);
        assert!(!n.to_ascii_lowercase().ends_with(validate::PARTIAL_SUFFIX));
    }
}

fn size(s: &str, l: &Limits) {
    if let Some(sz) = short(validate::disk_size(s, l)) {
        assert!(sz.bytes() >= 1 << 20 && sz.bytes() <= l.max_disk_bytes && sz.bytes() % 512 == 0);
    }
}

fn disk(d: &str) {
    if let Some(n) = short(validate::disk_name(d)) {
        assert_eq!(format!("disk{n}"), d);
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(args) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let l = Limits::default();
    let req = match iohyve::parse(&args) {
        Ok(r) => r,
        Err(ParseError::Action { message, .. }) => {
            assert!(message.len() <= MAX_ERROR, "{message:.200}");
            return;
        }
        Err(ParseError::Protocol(p)) => {
            assert!(p.detail.map_or(0, |d| d.len()) <= MAX_ERROR);
            return;
        }
    };
    match req {
        IohyveRequest::ListVms
        | IohyveRequest::ListIsos
        | IohyveRequest::IsSetup
        | IohyveRequest::Version => {}
        IohyveRequest::FetchIso { url, name, sha256 } => {
            if let Some(u) = short(validate::fetch_url(&url)) {
                if let Some(n) = short(validate::iso_name_from_url(&u)) {
                    iso(&n);
                }
            }
            if let Some(n) = name {
                iso(&n);
            }
            if let Some(h) = sha256 {
                if let Some(h) = short(validate::sha256_hex(&h)) {
                    assert!(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                }
            }
        }
        IohyveRequest::RenameIso { source, target } => {
            iso(&source);
            iso(&target);
        }
        IohyveRequest::RmIso { target } => iso(&target),
        IohyveRequest::Setup { pool, nic } => {
            if short(validate::pool_name(&pool)).is_some() {
                safe(&pool);
            }
            if short(validate::nic_name(&nic)).is_some() {
                safe(&nic);
                assert!(nic.len() <= 15);
            }
        }
        IohyveRequest::Create { name, size: s } => {
            guest(&name);
            size(&s, &l);
        }
        IohyveRequest::AddDisk {
            name,
            size: s,
            pool,
        } => {
            guest(&name);
            size(&s, &l);
            if let Some(p) = pool {
                if short(validate::pool_name(&p)).is_some() {
                    safe(&p);
                }
            }
        }
        IohyveRequest::ResizeDisk {
            name,
            disk: d,
            size: s,
        } => {
            guest(&name);
            disk(&d);
            size(&s, &l);
        }
        IohyveRequest::DeleteDisk { name, disk: d } => {
            guest(&name);
            disk(&d);
        }
        IohyveRequest::Install { name, iso: i } => {
            guest(&name);
            iso(&i);
        }
        IohyveRequest::Start { name }
        | IohyveRequest::Stop { name, .. }
        | IohyveRequest::Delete { name }
        | IohyveRequest::ListDisks { name }
        | IohyveRequest::GetProps { name } => guest(&name),
        IohyveRequest::SetProp { name, props: p } => {
            guest(&name);
            for (k, v) in &p {
                if let Some(stored) = short(props::check(k, v, &l)) {
                    // What is stored passes its own check again, unchanged.
                    assert_eq!(props::check(k, &stored, &l).as_deref(), Ok(stored.as_str()));
                    assert!(!stored.chars().any(char::is_control), "{k}={stored:?}");
                }
            }
        }
        IohyveRequest::ConsoleLog { name, bytes } => {
            guest(&name);
            if let Some(b) = bytes {
                if let Some(n) = short(validate::console_bytes(&b, 65536)) {
                    assert!((1..=65536).contains(&n));
                }
            }
        }
    }
});
