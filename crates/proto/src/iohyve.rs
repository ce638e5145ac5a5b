//! Typed requests of the `sysadm/iohyve` class (PROTOCOL.md section 5).
//!
//! This layer checks the shape of the arguments only: that the action is
//! known, that the required keys are there (answered with the original
//! server's wording) and that every value is a string. What the strings may
//! contain (names, sizes, property values) is the engine's to judge.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::envelope::{json_type_name, ProtocolError};

/// Every action of the class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    ListVms,
    FetchIso,
    ListIsos,
    RenameIso,
    RmIso,
    Setup,
    IsSetup,
    Create,
    Install,
    Start,
    Stop,
    Delete,
    AddDisk,
    ListDisks,
    ResizeDisk,
    DeleteDisk,
    Version,
    GetProps,
    SetProp,
    ConsoleLog,
}

impl Action {
    pub const ALL: [Action; 20] = [
        Action::ListVms,
        Action::FetchIso,
        Action::ListIsos,
        Action::RenameIso,
        Action::RmIso,
        Action::Setup,
        Action::IsSetup,
        Action::Create,
        Action::Install,
        Action::Start,
        Action::Stop,
        Action::Delete,
        Action::AddDisk,
        Action::ListDisks,
        Action::ResizeDisk,
        Action::DeleteDisk,
        Action::Version,
        Action::GetProps,
        Action::SetProp,
        Action::ConsoleLog,
    ];

    /// The action's name on the wire, also the key of its reply.
    pub fn name(self) -> &'static str {
        match self {
            Action::ListVms => "listvms",
            Action::FetchIso => "fetchiso",
            Action::ListIsos => "listisos",
            Action::RenameIso => "renameiso",
            Action::RmIso => "rmiso",
            Action::Setup => "setup",
            Action::IsSetup => "issetup",
            Action::Create => "create",
            Action::Install => "install",
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Delete => "delete",
            Action::AddDisk => "adddisk",
            Action::ListDisks => "listdisks",
            Action::ResizeDisk => "resizedisk",
            Action::DeleteDisk => "deletedisk",
            Action::Version => "version",
            Action::GetProps => "getprops",
            Action::SetProp => "setprop",
            Action::ConsoleLog => "consolelog",
        }
    }

    /// Looks an action up by its wire name (case-sensitive, as the original).
    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }

    /// Actions that only read: the ones a limited user may run.
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Action::ListVms
                | Action::ListIsos
                | Action::IsSetup
                | Action::ListDisks
                | Action::Version
                | Action::GetProps
        )
    }

    /// Keys that must be present, in the order the error names them.
    fn required(self) -> &'static [&'static str] {
        match self {
            Action::ListVms | Action::ListIsos | Action::IsSetup | Action::Version => &[],
            Action::FetchIso => &["url"],
            Action::RenameIso => &["source", "target"],
            Action::RmIso => &["target"],
            Action::Setup => &["pool", "nic"],
            Action::Create | Action::AddDisk => &["name", "size"],
            Action::Install => &["name", "iso"],
            Action::ResizeDisk => &["name", "disk", "size"],
            Action::DeleteDisk => &["name", "disk"],
            Action::Start
            | Action::Stop
            | Action::Delete
            | Action::ListDisks
            | Action::GetProps
            | Action::SetProp
            | Action::ConsoleLog => &["name"],
        }
    }

    /// The original server's sentence for a missing key; clients may match it.
    fn missing_message(self) -> &'static str {
        match self {
            Action::AddDisk => "Missing required key(s) 'name', 'size'",
            Action::Create => "Missing required key(s) 'name/size'",
            Action::DeleteDisk => "Missing required key(s) 'name/disk'",
            Action::Install => "Missing required key(s) 'name/iso'",
            Action::RenameIso => "Missing required key(s) 'source / target'",
            Action::ResizeDisk => "Missing required key(s) 'name/disk/size'",
            Action::Setup => "Missing required key(s) 'pool / nic'",
            Action::FetchIso => "Missing required key 'url'",
            Action::RmIso => "Missing required key 'target'",
            _ => "Missing required key 'name'",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One request of the class, with its arguments as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IohyveRequest {
    ListVms,
    ListIsos,
    IsSetup,
    Version,
    FetchIso {
        url: String,
        /// The ISO's name in the store; by default the URL's last segment.
        name: Option<String>,
        /// Expected SHA-256 of the whole file, in hex.
        sha256: Option<String>,
    },
    RenameIso {
        source: String,
        target: String,
    },
    RmIso {
        target: String,
    },
    Setup {
        pool: String,
        nic: String,
    },
    Create {
        name: String,
        size: String,
    },
    Install {
        name: String,
        iso: String,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
        force: bool,
    },
    Delete {
        name: String,
    },
    AddDisk {
        name: String,
        size: String,
        pool: Option<String>,
    },
    ListDisks {
        name: String,
    },
    ResizeDisk {
        name: String,
        disk: String,
        size: String,
    },
    DeleteDisk {
        name: String,
        disk: String,
    },
    GetProps {
        name: String,
    },
    /// `props` holds every key of the request but `action` and `name`.
    SetProp {
        name: String,
        props: BTreeMap<String, String>,
    },
    ConsoleLog {
        name: String,
        /// At most this many bytes from the end of the log.
        bytes: Option<String>,
    },
}

impl IohyveRequest {
    pub fn action(&self) -> Action {
        match self {
            IohyveRequest::ListVms => Action::ListVms,
            IohyveRequest::ListIsos => Action::ListIsos,
            IohyveRequest::IsSetup => Action::IsSetup,
            IohyveRequest::Version => Action::Version,
            IohyveRequest::FetchIso { .. } => Action::FetchIso,
            IohyveRequest::RenameIso { .. } => Action::RenameIso,
            IohyveRequest::RmIso { .. } => Action::RmIso,
            IohyveRequest::Setup { .. } => Action::Setup,
            IohyveRequest::Create { .. } => Action::Create,
            IohyveRequest::Install { .. } => Action::Install,
            IohyveRequest::Start { .. } => Action::Start,
            IohyveRequest::Stop { .. } => Action::Stop,
            IohyveRequest::Delete { .. } => Action::Delete,
            IohyveRequest::AddDisk { .. } => Action::AddDisk,
            IohyveRequest::ListDisks { .. } => Action::ListDisks,
            IohyveRequest::ResizeDisk { .. } => Action::ResizeDisk,
            IohyveRequest::DeleteDisk { .. } => Action::DeleteDisk,
            IohyveRequest::GetProps { .. } => Action::GetProps,
            IohyveRequest::SetProp { .. } => Action::SetProp,
            IohyveRequest::ConsoleLog { .. } => Action::ConsoleLog,
        }
    }
}

/// Why a request of the class could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// Not an object, no action, unknown action: a protocol error (400).
    Protocol(ProtocolError),
    /// A known action with bad arguments: answered in band, as
    /// `{"<action>":{"error":"<message>"}}`.
    Action { action: Action, message: String },
}

struct Args<'a> {
    action: Action,
    obj: &'a Map<String, Value>,
}

impl Args<'_> {
    fn err(&self, message: String) -> ParseError {
        ParseError::Action {
            action: self.action,
            message,
        }
    }

    fn string(&self, key: &str, v: &Value) -> Result<String, ParseError> {
        match v {
            Value::String(s) => Ok(s.clone()),
            // setprop's keys are the client's own: quoted cut short.
            other => Err(self.err(format!(
                "Key '{}' must be a string, not {}",
                truncate(key, 40),
                json_type_name(other)
            ))),
        }
    }

    fn req(&self, key: &str) -> Result<String, ParseError> {
        // Presence was checked for every required key before any is read.
        self.string(key, &self.obj[key])
    }

    fn opt(&self, key: &str) -> Result<Option<String>, ParseError> {
        self.obj.get(key).map(|v| self.string(key, v)).transpose()
    }

    fn flag(&self, key: &str) -> Result<bool, ParseError> {
        match self.obj.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::String(s)) if s == "true" => Ok(true),
            Some(Value::String(s)) if s == "false" || s.is_empty() => Ok(false),
            Some(other) => Err(self.err(format!(
                "Key '{key}' must be \"true\" or \"false\", not {}",
                match other {
                    Value::String(s) => format!("{:?}", truncate(s, 40)),
                    v => json_type_name(v).to_string(),
                }
            ))),
        }
    }
}

/// Parses the `args` of a `sysadm/iohyve` request.
pub fn parse(args: &Value) -> Result<IohyveRequest, ParseError> {
    let Value::Object(obj) = args else {
        return Err(ParseError::Protocol(ProtocolError::bad_request(format!(
            "iohyve arguments must be an object, not {}",
            json_type_name(args)
        ))));
    };
    let action = match obj.get("action") {
        Some(Value::String(s)) => Action::from_name(s).ok_or_else(|| {
            ParseError::Protocol(ProtocolError::bad_request(format!(
                "unknown iohyve action {:?}",
                truncate(s, 64)
            )))
        })?,
        Some(other) => {
            return Err(ParseError::Protocol(ProtocolError::bad_request(format!(
                "'action' must be a string, not {}",
                json_type_name(other)
            ))))
        }
        None => {
            return Err(ParseError::Protocol(ProtocolError::bad_request(
                "iohyve request has no 'action'",
            )))
        }
    };
    let a = Args { action, obj };
    if action.required().iter().any(|k| !obj.contains_key(*k)) {
        return Err(a.err(action.missing_message().to_string()));
    }
    Ok(match action {
        Action::ListVms => IohyveRequest::ListVms,
        Action::ListIsos => IohyveRequest::ListIsos,
        Action::IsSetup => IohyveRequest::IsSetup,
        Action::Version => IohyveRequest::Version,
        Action::FetchIso => IohyveRequest::FetchIso {
            url: a.req("url")?,
            name: a.opt("name")?,
            sha256: a.opt("sha256")?,
        },
        Action::RenameIso => IohyveRequest::RenameIso {
            source: a.req("source")?,
            target: a.req("target")?,
        },
        Action::RmIso => IohyveRequest::RmIso {
            target: a.req("target")?,
        },
        Action::Setup => IohyveRequest::Setup {
            pool: a.req("pool")?,
            nic: a.req("nic")?,
        },
        Action::Create => IohyveRequest::Create {
            name: a.req("name")?,
            size: a.req("size")?,
        },
        Action::Install => IohyveRequest::Install {
            name: a.req("name")?,
            iso: a.req("iso")?,
        },
        Action::Start => IohyveRequest::Start {
            name: a.req("name")?,
        },
        Action::Stop => IohyveRequest::Stop {
            name: a.req("name")?,
            force: a.flag("force")?,
        },
        Action::Delete => IohyveRequest::Delete {
            name: a.req("name")?,
        },
        Action::AddDisk => IohyveRequest::AddDisk {
            name: a.req("name")?,
            size: a.req("size")?,
            pool: a.opt("pool")?.filter(|p| !p.is_empty()),
        },
        Action::ListDisks => IohyveRequest::ListDisks {
            name: a.req("name")?,
        },
        Action::ResizeDisk => IohyveRequest::ResizeDisk {
            name: a.req("name")?,
            disk: a.req("disk")?,
            size: a.req("size")?,
        },
        Action::DeleteDisk => IohyveRequest::DeleteDisk {
            name: a.req("name")?,
            disk: a.req("disk")?,
        },
        Action::GetProps => IohyveRequest::GetProps {
            name: a.req("name")?,
        },
        Action::SetProp => {
            let name = a.req("name")?;
            let mut props = BTreeMap::new();
            for (k, v) in obj {
                if k == "name" || k == "action" {
                    continue;
                }
                props.insert(k.clone(), a.string(k, v)?);
            }
            if props.is_empty() {
                return Err(a.err("No settings supplied!".into()));
            }
            IohyveRequest::SetProp { name, props }
        }
        Action::ConsoleLog => IohyveRequest::ConsoleLog {
            name: a.req("name")?,
            bytes: a.opt("bytes")?,
        },
    })
}

/// Cuts a client-supplied string for quoting in an error sentence.
pub fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max_chars).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn action_err(v: Value) -> (Action, String) {
        match parse(&v).unwrap_err() {
            ParseError::Action { action, message } => (action, message),
            ParseError::Protocol(p) => panic!("expected an action error, got {p}"),
        }
    }

    #[test]
    fn names_round_trip() {
        for a in Action::ALL {
            assert_eq!(Action::from_name(a.name()), Some(a));
        }
        assert_eq!(Action::from_name("ListVMs"), None);
    }

    #[test]
    fn missing_keys_use_the_original_wording() {
        let cases = [
            (
                json!({"action": "create"}),
                "Missing required key(s) 'name/size'",
            ),
            (
                json!({"action": "create", "name": "a"}),
                "Missing required key(s) 'name/size'",
            ),
            (json!({"action": "delete"}), "Missing required key 'name'"),
            (
                json!({"action": "adddisk", "size": "1G"}),
                "Missing required key(s) 'name', 'size'",
            ),
            (
                json!({"action": "setup", "pool": "tank"}),
                "Missing required key(s) 'pool / nic'",
            ),
            (
                json!({"action": "renameiso"}),
                "Missing required key(s) 'source / target'",
            ),
            (json!({"action": "rmiso"}), "Missing required key 'target'"),
            (json!({"action": "fetchiso"}), "Missing required key 'url'"),
            (
                json!({"action": "resizedisk", "name": "a"}),
                "Missing required key(s) 'name/disk/size'",
            ),
            (
                json!({"action": "deletedisk", "name": "a"}),
                "Missing required key(s) 'name/disk'",
            ),
            (
                json!({"action": "install", "name": "a"}),
                "Missing required key(s) 'name/iso'",
            ),
        ];
        for (v, msg) in cases {
            assert_eq!(action_err(v).1, msg);
        }
    }

    #[test]
    fn non_string_values_are_action_errors() {
        for bad in [json!(1), json!(null), json!([]), json!({}), json!(true)] {
            let (a, msg) = action_err(json!({"action": "create", "name": bad, "size": "1G"}));
            assert_eq!(a, Action::Create);
            assert!(msg.starts_with("Key 'name' must be a string"), "{msg}");
        }
        let (_, msg) = action_err(json!({"action": "setprop", "name": "g", "ram": 512}));
        assert_eq!(msg, "Key 'ram' must be a string, not a number");
        let (_, msg) = action_err(json!({"action": "stop", "name": "g", "force": "yes"}));
        assert!(msg.contains("\"true\" or \"false\""));
        // A client's key is quoted cut short, never whole (found by the
        // iohyve_args fuzz target: a setprop key of 1 KB and more).
        let long = "k".repeat(1 << 20);
        let (_, msg) = action_err(json!({"action": "setprop", "name": "g", long: 5}));
        assert!(msg.len() < 200, "{} bytes", msg.len());
        // A client's value is quoted cut short, never whole.
        let (_, msg) =
            action_err(json!({"action": "stop", "name": "g", "force": "y".repeat(1 << 20)}));
        assert!(msg.len() < 200, "{} bytes", msg.len());
    }

    #[test]
    fn protocol_errors() {
        for v in [
            json!([]),
            json!("listvms"),
            json!({}),
            json!({"action": 3}),
            json!({"action": "frobnicate"}),
        ] {
            assert!(matches!(parse(&v), Err(ParseError::Protocol(_))), "{v}");
        }
    }

    #[test]
    fn setprop_collects_properties() {
        let r =
            parse(&json!({"action": "setprop", "name": "g", "ram": "512M", "cpu": "2"})).unwrap();
        let IohyveRequest::SetProp { name, props } = r else {
            panic!()
        };
        assert_eq!(name, "g");
        assert_eq!(props.len(), 2);
        assert_eq!(
            action_err(json!({"action": "setprop", "name": "g"})).1,
            "No settings supplied!"
        );
    }

    #[test]
    fn stop_force() {
        let f = |v| match parse(&v).unwrap() {
            IohyveRequest::Stop { force, .. } => force,
            _ => unreachable!(),
        };
        assert!(f(json!({"action": "stop", "name": "g", "force": "true"})));
        assert!(f(json!({"action": "stop", "name": "g", "force": true})));
        assert!(!f(json!({"action": "stop", "name": "g"})));
    }
}
