//! Every kind of name the server takes (guests, ISOs, pools, nics, users,
//! disks, task ids) and the decoders beside them: an accepted name is safe
//! as a file or device name, canonical forms are stable, errors are short.
#![no_main]

use hyve_engine::validate;
use libfuzzer_sys::fuzz_target;

fn safe(kind: &str, name: &str) {
    assert!(!name.is_empty(), "{kind}");
    assert!(
        !name.contains('/') && !name.contains("..") && !name.contains('\0'),
        "{kind} {name:?}"
    );
    assert!(
        !name.starts_with('-') && !name.starts_with('.'),
        "{kind} {name:?}"
    );
    assert!(
        name.bytes().all(|b| b.is_ascii_graphic()),
        "{kind} {name:?}"
    );
}

fn check(kind: &str, r: Result<(), String>, name: &str) {
    match r {
        Ok(()) => safe(kind, name),
        Err(e) => assert!(e.len() < 600, "{kind}: {e:.100}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    check("guest", validate::guest_name(s), s);
    check("iso", validate::iso_name(s), s);
    check("pool", validate::pool_name(s), s);
    check("nic", validate::nic_name(s), s);
    check("user", validate::user_name(s), s);
    if validate::iso_name(s).is_ok() {
        assert!(!s.to_ascii_lowercase().ends_with(".part"));
    }
    if validate::guest_name(s).is_ok() {
        assert!(!s.eq_ignore_ascii_case("ISO") && !s.eq_ignore_ascii_case("Firmware"));
    }
    if let Ok(n) = validate::disk_name(s) {
        assert_eq!(format!("disk{n}"), s);
        assert!(n <= 999);
    }
    if let Ok(id) = validate::task_id(s) {
        assert_eq!(validate::task_id(&id).as_deref(), Ok(id.as_str()));
        assert!(id.starts_with('{') && id.ends_with('}') && id.len() == 38);
    }
    if let Ok(h) = validate::sha256_hex(s) {
        assert_eq!(h, s.to_ascii_lowercase());
    }
    if let Some(d) = validate::percent_decode(s) {
        assert!(d.len() <= s.len());
    }
    let q = validate::quote(s);
    assert!(
        q.chars().count() <= 2 + 40 * 10 + 1,
        "quote: {} chars",
        q.chars().count()
    );
    let _ = validate::password(s);
    let _ = validate::console_bytes(s, 65536);
});
