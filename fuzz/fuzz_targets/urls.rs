//! fetchiso's URLs: an accepted URL is of a scheme we download from, has
//! a host unless it is file://, gives a safe ISO name or says why not, and
//! never shows its password once redacted.
#![no_main]

use hyve_engine::{fetch, validate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let url = match validate::fetch_url(s) {
        Ok(u) => u,
        Err(e) => {
            assert!(e.len() < 600, "{e:.100}");
            return;
        }
    };
    assert!(validate::FETCH_SCHEMES.contains(&url.scheme()));
    if url.scheme() == "file" {
        assert!(matches!(
            url.host_str(),
            None | Some("") | Some("localhost")
        ));
    } else {
        assert!(url.host_str().is_some_and(|h| !h.is_empty()));
    }
    // What the task record keeps parses back to the same URL.
    assert_eq!(url::Url::parse(url.as_str()).unwrap(), url);
    match validate::iso_name_from_url(&url) {
        Ok(name) => {
            validate::iso_name(&name).expect("the name from a URL is an ISO name");
            assert!(!name.contains('/') && !name.starts_with('.'));
        }
        Err(e) => assert!(e.len() < 600, "{e:.100}"),
    }
    // Redacted, the URL keeps everything but its password, which is `***`
    // (the same text elsewhere, in the path say, is not the password).
    let shown = url::Url::parse(&fetch::redact(&url)).expect("a redacted URL parses");
    match url.password() {
        Some(_) => assert_eq!(shown.password(), Some("***"), "{shown}"),
        None => assert_eq!(shown.password(), None, "{shown}"),
    }
    assert_eq!(
        (
            shown.scheme(),
            shown.username(),
            shown.host_str(),
            shown.port(),
            shown.path()
        ),
        (
            url.scheme(),
            url.username(),
            url.host_str(),
            url.port(),
            url.path()
        )
    );
});
