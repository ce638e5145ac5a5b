//! Every check of outside input, in one place.
//!
//! Names become file names and device names, so they are held to a
//! whitelist: nothing that could walk out of a folder (`/`, `..`), be read as
//! an option (a leading `-`), or surprise a person reading a listing
//! (whitespace, control characters, shell punctuation). Each check returns a
//! sentence that quotes the offending value (cut short and escaped) and says
//! what would have been accepted.

use crate::size::Size;

/// Quotes a client-supplied value for an error sentence: escaped, and cut to
/// 40 characters so a 10 KB string does not become a 10 KB error.
pub fn quote(s: &str) -> String {
    const MAX: usize = 40;
    let mut out = String::from("'");
    for (i, c) in s.chars().enumerate() {
        if i == MAX {
            out.push('…');
            break;
        }
        out.extend(c.escape_debug());
    }
    out.push('\'');
    out
}

/// What a kind of name may look like.
struct NameRule {
    what: &'static str,
    max_len: usize,
    /// Characters allowed after the first, besides ASCII letters and digits.
    extra: &'static str,
    /// Whether the first character may be a digit.
    leading_digit: bool,
}

impl NameRule {
    fn check(&self, s: &str) -> Result<(), String> {
        let q = quote(s);
        let what = self.what;
        if s.is_empty() {
            return Err(format!("the {what} must not be empty"));
        }
        if s.len() > self.max_len {
            return Err(format!(
                "the {what} {q} is too long: at most {} characters",
                self.max_len
            ));
        }
        let first = s.chars().next().expect("not empty");
        let first_ok =
            first.is_ascii_alphabetic() || (self.leading_digit && first.is_ascii_digit());
        let rest_ok = s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || self.extra.contains(c));
        if !first_ok || !rest_ok || s.contains("..") {
            let extra: Vec<String> = self.extra.chars().map(|c| format!("'{c}'")).collect();
            return Err(format!(
                "invalid {what} {q}: use letters, digits and {}, starting with a letter{}, and no '..'",
                extra.join(", "),
                if self.leading_digit { " or digit" } else { "" }
            ));
        }
        Ok(())
    }
}

const GUEST: NameRule = NameRule {
    what: "guest name",
    max_len: 64,
    extra: "._-",
    leading_digit: true,
};

const ISO: NameRule = NameRule {
    what: "ISO name",
    max_len: 200,
    extra: "._+~-",
    leading_digit: true,
};

const POOL: NameRule = NameRule {
    what: "pool name",
    max_len: 64,
    extra: "._-",
    leading_digit: false,
};

const NIC: NameRule = NameRule {
    what: "nic name",
    max_len: 15,
    extra: "._-",
    leading_digit: false,
};

const USER: NameRule = NameRule {
    what: "user name",
    max_len: 32,
    extra: "._-",
    leading_digit: false,
};

/// Folders that sit beside the guests in `<pool>/iohyve/`.
const RESERVED_GUEST_NAMES: [&str; 2] = ["ISO", "Firmware"];

/// The data dir's own folder, which a pool of the same name would shadow.
pub const STATE_DIR: &str = "hyve";

/// Suffix of a download in progress in the ISO store.
pub const PARTIAL_SUFFIX: &str = ".part";

pub fn guest_name(s: &str) -> Result<(), String> {
    GUEST.check(s)?;
    if RESERVED_GUEST_NAMES
        .iter()
        .any(|r| r.eq_ignore_ascii_case(s))
    {
        return Err(format!(
            "the guest name {} is reserved: it is a folder of the pool",
            quote(s)
        ));
    }
    Ok(())
}

pub fn iso_name(s: &str) -> Result<(), String> {
    ISO.check(s)?;
    if s.to_ascii_lowercase().ends_with(PARTIAL_SUFFIX) {
        return Err(format!(
            "the ISO name {} is reserved: names ending in {PARTIAL_SUFFIX} are downloads in progress",
            quote(s)
        ));
    }
    Ok(())
}

pub fn pool_name(s: &str) -> Result<(), String> {
    POOL.check(s)?;
    if s == STATE_DIR {
        return Err(format!(
            "the pool name {} is reserved for the server's own state",
            quote(s)
        ));
    }
    Ok(())
}

pub fn nic_name(s: &str) -> Result<(), String> {
    NIC.check(s)
}

/// A login name, for the embedded account file and for PAM alike: the
/// portable POSIX user names (letters, digits, `.`, `_`, `-`; not starting
/// with `-`), so that nothing odd reaches a log line or the host's PAM stack.
pub fn user_name(s: &str) -> Result<(), String> {
    USER.check(s)
}

/// The longest password accepted: argon2 and PAM take any length, but a
/// megabyte "password" is an attack on the CPU, not a secret.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A password: not empty, at most [`MAX_PASSWORD_BYTES`], and no NUL byte
/// (PAM takes C strings, where a NUL would cut the password short).
pub fn password(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the password must not be empty".into());
    }
    if s.len() > MAX_PASSWORD_BYTES {
        return Err(format!(
            "the password is too long: at most {MAX_PASSWORD_BYTES} bytes"
        ));
    }
    if s.contains('\0') {
        return Err("the password must not contain a NUL character".into());
    }
    Ok(())
}

/// Parses a disk name, `disk0` to `disk999`, into its number.
pub fn disk_name(s: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "invalid disk name {}: disks are named disk0, disk1, …",
            quote(s)
        )
    };
    let n = s.strip_prefix("disk").ok_or_else(bad)?;
    if n.is_empty() || n.len() > 3 || !n.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if n.len() > 1 && n.starts_with('0') {
        return Err(bad());
    }
    n.parse().map_err(|_| bad())
}

/// The `bytes` of `consolelog`: a whole number from 1 to `max`.
pub fn console_bytes(s: &str, max: usize) -> Result<usize, String> {
    let bad = || {
        format!(
            "invalid bytes {}: expected a whole number from 1 to {max}",
            quote(s)
        )
    };
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

/// Bounds on sizes, from the config.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_disk_bytes: u64,
    pub max_ram_bytes: u64,
    pub max_cpus: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_disk_bytes: 16 << 40,
            max_ram_bytes: 1 << 40,
            max_cpus: 128,
        }
    }
}

const MIN_DISK: u64 = 1 << 20;
const MIN_RAM: u64 = 16 << 20;

/// A disk size: at least 1M, a whole number of 512-byte sectors, within the
/// configured maximum.
pub fn disk_size(s: &str, limits: &Limits) -> Result<Size, String> {
    let size = Size::parse(s)?;
    if size.bytes() < MIN_DISK {
        return Err(format!("disk size {} is too small: at least 1M", quote(s)));
    }
    if size.bytes() % 512 != 0 {
        return Err(format!(
            "disk size {} is not a whole number of 512-byte sectors",
            quote(s)
        ));
    }
    if size.bytes() > limits.max_disk_bytes {
        return Err(format!(
            "disk size {} is larger than this server allows ({})",
            quote(s),
            Size::from_bytes(limits.max_disk_bytes)
        ));
    }
    Ok(size)
}

/// Memory for a guest: at least 16M, whole megabytes, within the maximum.
pub fn ram_size(s: &str, limits: &Limits) -> Result<Size, String> {
    let size = Size::parse(s)?;
    if size.bytes() < MIN_RAM || size.bytes() % (1 << 20) != 0 {
        return Err(format!(
            "ram {} must be a whole number of megabytes, at least 16M",
            quote(s)
        ));
    }
    if size.bytes() > limits.max_ram_bytes {
        return Err(format!(
            "ram {} is more than this server allows ({})",
            quote(s),
            Size::from_bytes(limits.max_ram_bytes)
        ));
    }
    Ok(size)
}

/// Free text (a description): printable, no control characters.
pub fn printable_text(what: &str, s: &str, max_chars: usize) -> Result<(), String> {
    if s.chars().count() > max_chars {
        return Err(format!(
            "{what} is too long: at most {max_chars} characters"
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(format!(
            "{what} {} contains the control character {:?}",
            quote(s),
            c
        ));
    }
    Ok(())
}

/// The URL schemes `fetchiso` downloads from.
pub const FETCH_SCHEMES: [&str; 4] = ["http", "https", "ftp", "file"];

/// The longest URL `fetchiso` takes.
const MAX_URL_LEN: usize = 4096;

/// A `fetchiso` URL: parsed, of a scheme we download from, with a host for
/// the network schemes and none (or `localhost`) for `file://`. The scheme
/// is checked before anything else so that `gopher://` gets a sentence about
/// schemes, not about hosts.
pub fn fetch_url(s: &str) -> Result<url::Url, String> {
    if s.is_empty() {
        return Err("the URL must not be empty".into());
    }
    if s.len() > MAX_URL_LEN {
        return Err(format!(
            "the URL {} is too long: at most {MAX_URL_LEN} characters",
            quote(s)
        ));
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "the URL {} contains spaces or control characters",
            quote(s)
        ));
    }
    let url = url::Url::parse(s).map_err(|e| format!("the URL {} is not valid: {e}", quote(s)))?;
    let scheme = url.scheme();
    if !FETCH_SCHEMES.contains(&scheme) {
        return Err(format!(
            "unsupported URL scheme '{}': fetchiso downloads http://, https://, ftp:// and file:// URLs",
            quote(scheme).trim_matches('\'')
        ));
    }
    match scheme {
        "file" => {
            if !matches!(url.host_str(), None | Some("") | Some("localhost")) {
                return Err(format!(
                    "the URL {} names a host: file:// URLs read files of this server only",
                    quote(s)
                ));
            }
            if url.query().is_some() {
                return Err(format!(
                    "the URL {} has a query: a file:// URL is a path only",
                    quote(s)
                ));
            }
        }
        _ => {
            if url.host_str().is_none_or(str::is_empty) {
                return Err(format!("the URL {} has no host", quote(s)));
            }
        }
    }
    Ok(url)
}

/// The ISO name a URL gives by default: the last segment of its path,
/// percent-decoded, held to the ISO name rules (so `..%2F` is refused).
pub fn iso_name_from_url(url: &url::Url) -> Result<String, String> {
    let last = url
        .path_segments()
        .and_then(|mut segs| segs.next_back())
        .unwrap_or("");
    if last.is_empty() {
        return Err(format!(
            "the URL {} does not end in a file name: give the ISO a name",
            quote(url.as_str())
        ));
    }
    let name = percent_decode(last)
        .ok_or_else(|| format!("the file name {} in the URL is not UTF-8", quote(last)))?;
    iso_name(&name).map_err(|e| format!("{e} (taken from the URL; give the ISO a name)"))?;
    Ok(name)
}

/// `%XX` decoding (of a path segment, a user name...); `None` if the
/// bytes are not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// A SHA-256 digest in hex (64 digits, either case), returned lower-case.
pub fn sha256_hex(s: &str) -> Result<String, String> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the sha256 {} is not a SHA-256 digest: 64 hexadecimal digits",
            quote(s)
        ));
    }
    Ok(s.to_ascii_lowercase())
}

/// A task id as the dispatcher gives it, `{<uuid>}`; the braces may be
/// left out. Returned in the braced, lower-case form.
pub fn task_id(s: &str) -> Result<String, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(s);
    let id = uuid::Uuid::try_parse(inner).map_err(|_| {
        format!(
            "invalid task id {}: task ids look like {{<uuid>}}",
            quote(s)
        )
    })?;
    Ok(format!("{{{}}}", id.hyphenated()))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const HOSTILE: [&str; 12] = [
        "../x", "..", ".", "-rf", "a b", "$(id)", "", "a/b", "x\n", "`id`", "a;b", "é",
    ];

    #[test]
    fn hostile_names_are_refused() {
        let long = "a".repeat(10 * 1024);
        for s in HOSTILE.iter().copied().chain([long.as_str()]) {
            assert!(guest_name(s).is_err(), "guest {s:?}");
            assert!(iso_name(s).is_err(), "iso {s:?}");
            assert!(pool_name(s).is_err(), "pool {s:?}");
            assert!(nic_name(s).is_err(), "nic {s:?}");
            assert!(disk_name(s).is_err(), "disk {s:?}");
            assert!(user_name(s).is_err(), "user {s:?}");
        }
    }

    #[test]
    fn ordinary_names_pass() {
        for s in ["bsdguest", "web-01", "db_2.example", "9front"] {
            guest_name(s).unwrap();
        }
        for s in [
            "FreeBSD-10.2-RELEASE-amd64-disc1.iso",
            "debian-12.1.0-amd64-netinst.iso",
            "TRUEOS10.2-RELEASE-08-19-2015-x64-netinstall.iso",
            "gparted+live~1.iso",
        ] {
            iso_name(s).unwrap();
        }
        pool_name("tank").unwrap();
        nic_name("re0").unwrap();
        nic_name("enp0s3").unwrap();
        for s in ["root", "alice", "j.doe", "svc_hyve", "ops-1"] {
            user_name(s).unwrap();
        }
        assert_eq!(disk_name("disk0"), Ok(0));
        assert_eq!(disk_name("disk12"), Ok(12));
    }

    #[test]
    fn console_bytes_are_bounded() {
        assert_eq!(console_bytes("100", 65536), Ok(100));
        for s in ["0", "-1", "1e3", "", "65537", " 5", "99999999999999"] {
            assert!(console_bytes(s, 65536).is_err(), "{s}");
        }
    }

    #[test]
    fn reserved_names() {
        assert!(guest_name("ISO").is_err());
        assert!(guest_name("firmware").is_err());
        assert!(iso_name("x.iso.part").is_err());
        assert!(pool_name(STATE_DIR).is_err());
        assert!(disk_name("disk01").is_err());
        assert!(disk_name("disk1000").is_err());
    }

    #[test]
    fn errors_quote_short() {
        let long = "x".repeat(10_000);
        let e = guest_name(&format!("-{long}")).unwrap_err();
        assert!(e.len() < 200, "{e}");
        assert_eq!(quote("a\nb"), "'a\\nb'");
    }

    #[test]
    fn passwords() {
        password("correct horse").unwrap();
        assert!(password("").is_err());
        assert!(password("a\0b").is_err());
        assert!(password(&"x".repeat(MAX_PASSWORD_BYTES + 1)).is_err());
        password(&"x".repeat(MAX_PASSWORD_BYTES)).unwrap();
    }

    #[test]
    fn size_limits() {
        let l = Limits::default();
        assert!(disk_size("10G", &l).is_ok());
        assert!(disk_size("512K", &l).is_err());
        assert!(disk_size("1048577", &l).is_err());
        assert!(disk_size("17T", &l).is_err());
        assert!(ram_size("256M", &l).is_ok());
        assert!(ram_size("8M", &l).is_err());
        assert!(ram_size("1025K", &l).is_err());
    }

    #[test]
    fn fetch_urls() {
        for ok in [
            "http://example.org/a.iso",
            "https://example.org:8443/pub/x.iso?x=1",
            "ftp://user:pw@ftp.example.org/pub/a.iso",
            "file:///srv/isos/a.iso",
            "file://localhost/srv/isos/a.iso",
        ] {
            fetch_url(ok).unwrap();
        }
        let e = fetch_url("gopher://example.org/a.iso").unwrap_err();
        assert!(e.starts_with("unsupported URL scheme 'gopher'"), "{e}");
        for bad in [
            "",
            "not a url",
            "http://",
            "ftp://:21/a.iso",
            "file://otherhost/a.iso",
            "http://example.org/a b.iso",
            "http://example.org/a\n.iso",
            "javascript:alert(1)",
            "data:text/plain,hi",
        ] {
            assert!(fetch_url(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_from_urls() {
        let n = |s: &str| iso_name_from_url(&fetch_url(s).unwrap());
        assert_eq!(n("http://h/pub/FreeBSD-14.iso").unwrap(), "FreeBSD-14.iso");
        assert_eq!(n("http://h/a%2Bb.iso?q=1").unwrap(), "a+b.iso");
        for bad in [
            "http://h/",
            "http://h/dir/",
            "http://h/..%2F..%2Fetc%2Fpasswd",
            "http://h/%2E%2E",
            "http://h/x.iso.part",
            "http://h/-rf.iso",
            "http://h/a%00b",
        ] {
            assert!(n(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_and_task_ids() {
        let h = "AB".repeat(32);
        assert_eq!(sha256_hex(&h).unwrap(), "ab".repeat(32));
        assert!(sha256_hex("abc").is_err());
        assert!(sha256_hex(&"g".repeat(64)).is_err());
        let id = "{b3a8b980-a564-4ff8-86a2-1971bd4f58d1}";
        assert_eq!(task_id(id).unwrap(), id);
        assert_eq!(task_id(&id[1..37]).unwrap(), id);
        assert!(task_id("{../x}").is_err());
        assert!(task_id("").is_err());
    }
}
