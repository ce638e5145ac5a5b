//! Sizes (`512M`, `10G`): parsing never panics or overflows, the text
//! shown parses back to the same bytes, and the disk and RAM checks keep
//! their bounds.
#![no_main]

use hyve_engine::{validate, Limits, Size};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    match Size::parse(s) {
        Ok(sz) => {
            let again = Size::parse(sz.text()).expect("the shown text parses");
            assert_eq!(again.bytes(), sz.bytes());
            assert_eq!(again.text(), sz.text());
            let exact = Size::from_bytes(sz.bytes());
            assert_eq!(Size::parse(exact.text()).unwrap().bytes(), sz.bytes());
        }
        Err(e) => assert!(e.len() < 600, "{} bytes: {e:.100}", e.len()),
    }
    let l = Limits::default();
    if let Ok(d) = validate::disk_size(s, &l) {
        assert!(d.bytes() >= 1 << 20 && d.bytes() <= l.max_disk_bytes && d.bytes() % 512 == 0);
    }
    if let Ok(r) = validate::ram_size(s, &l) {
        assert!(
            r.bytes() >= 16 << 20 && r.bytes() <= l.max_ram_bytes && r.bytes() % (1 << 20) == 0
        );
    }
});
