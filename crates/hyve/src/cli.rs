//! The client commands: each is one iohyve action sent over WebSocket,
//! printed as a table for people or as JSON with `--json`. Every command
//! connects through [`connect`], which handles trust (the certificate
//! remembered on first use, or `--ca`) and the login (the kept token, or a
//! new login when it has expired).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::{json, Value};

use hyve_client::{fingerprint_text, Client, ClientError, ConnectOptions, Trust};

use crate::trust::{server_key, State};
use crate::{table, EXIT_FAILED, EXIT_UNREACHABLE};

#[derive(Subcommand)]
pub enum ClientCommand {
    /// List guests with their state.
    List,
    /// List the ISOs in the store.
    Isolist,
    /// Rename an ISO.
    Renameiso { iso: String, new_name: String },
    /// Remove an ISO.
    Rmiso { iso: String },
    /// Set up a pool and the nic guests are bridged to: `setup pool=tank nic=em0`.
    Setup {
        /// `pool=<name>` and `nic=<interface>` (`net=` is taken for `nic=`).
        #[arg(required = true, value_name = "KEY=VALUE")]
        settings: Vec<String>,
    },
    /// Boot a guest from an ISO (CD first, then its disks) to install it.
    Install { name: String, iso: String },
    /// Start a guest from its disk0.
    Start { name: String },
    /// Stop a guest: the ACPI power button, then power off after the
    /// server's stop_timeout. The outcome shows in `hyve list`.
    Stop {
        name: String,
        /// Power off at once.
        #[arg(short, long)]
        force: bool,
    },
    /// Attach to a guest's serial console (type `~.` at the start of a line to leave).
    Console { name: String },
    /// Print a guest's recent console output.
    Consolelog {
        name: String,
        /// At most this many bytes from the end.
        #[arg(long)]
        bytes: Option<String>,
    },
    /// Create a guest with a disk0 of the given size (512M, 10G...).
    Create { name: String, size: String },
    /// Delete a guest and all its disks.
    Delete {
        name: String,
        /// Do not ask for confirmation.
        #[arg(short, long)]
        force: bool,
    },
    /// Add a disk to a guest, optionally in another pool.
    Add {
        name: String,
        size: String,
        pool: Option<String>,
    },
    /// List a guest's disks.
    Disks { name: String },
    /// Grow a disk: `resize <guest> disk0 20G`.
    Resize {
        name: String,
        disk: String,
        size: String,
    },
    /// Remove a disk other than disk0.
    Remove { name: String, disk: String },
    /// Show the server's version.
    Version,
    /// Show every property of a guest.
    Getall { name: String },
    /// Show one property of a guest.
    Get { name: String, prop: String },
    /// Set properties: `set <guest> ram=512M cpu=2`.
    Set {
        name: String,
        #[arg(required = true, value_name = "PROP=VALUE")]
        props: Vec<String>,
    },
    #[command(flatten)]
    Task(crate::tasks::TaskCommand),
}

/// An error for the user: the sentence and the exit status.
pub struct Failure(pub String, pub u8);

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            // The server's own sentence, without the HTTP status.
            ClientError::Refused { reason, .. } => Failure(reason, EXIT_FAILED),
            ClientError::Connect { .. } | ClientError::Closed => {
                Failure(e.to_string(), EXIT_UNREACHABLE)
            }
            _ => Failure(e.to_string(), EXIT_FAILED),
        }
    }
}

fn usage(msg: String) -> Failure {
    Failure(msg, 2)
}

fn failed(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), EXIT_FAILED)
}

/// Prints the output or the error, and gives the exit status.
pub fn finish(r: Result<String, Failure>) -> ExitCode {
    match r {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure(msg, code)) => {
            eprintln!("hyve: {msg}");
            ExitCode::from(code)
        }
    }
}

pub async fn run(target: &Target, json_out: bool, cmd: ClientCommand) -> ExitCode {
    finish(execute(target, json_out, cmd).await)
}

/// The server a command talks to, and how its certificate is trusted.
pub struct Target {
    pub url: String,
    pub ca: Option<PathBuf>,
}

impl Target {
    pub fn new(url: &str, ca: Option<&Path>) -> Target {
        Target {
            url: url.to_string(),
            ca: ca.map(Path::to_path_buf),
        }
    }
}

/// A user name and password from HYVE_USER and HYVE_PASSWORD, or asked for
/// on the terminal; `None` when neither is possible.
fn credentials(key: &str, user: Option<String>) -> Result<Option<(String, String)>, Failure> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let tty = std::io::stdin().is_terminal();
    let user = match user.or_else(|| env("HYVE_USER")) {
        Some(u) => u,
        None if tty => {
            print!("User for {key}: ");
            let _ = std::io::stdout().flush();
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| failed(e.to_string()))?;
            line.trim().to_string()
        }
        None => return Ok(None),
    };
    let password = match env("HYVE_PASSWORD") {
        Some(p) => p,
        None if tty => rpassword::prompt_password(format!("Password for {user}@{key}: "))
            .map_err(|e| failed(e.to_string()))?,
        None => return Ok(None),
    };
    Ok(Some((user, password)))
}

/// How the server's certificate is checked: against `--ca`, or against the
/// fingerprint remembered for it (none yet: first use).
fn trust_for(target: &Target, state: &State, key: &str) -> Result<Trust, Failure> {
    Ok(match (&target.ca, target.url.starts_with("wss://")) {
        (Some(ca), _) => Trust::ca_file(ca).map_err(failed)?,
        (None, true) => Trust::Fingerprint(state.known(key).map_err(failed)?),
        (None, false) => Trust::PublicRoots, // plain ws://: unused
    })
}

/// Connects, checking the certificate: against `--ca`, or against the
/// fingerprint remembered for this server (remembering it the first time).
async fn connect_trusted(target: &Target, state: &State, key: &str) -> Result<Client, Failure> {
    let trust = trust_for(target, state, key)?;
    let first_use = matches!(trust, Trust::Fingerprint(None));
    let options = ConnectOptions {
        trust,
        ..Default::default()
    };
    let client = match Client::connect_with(&target.url, &options).await {
        Ok(c) => c,
        Err(ClientError::CertificateChanged {
            expected, actual, ..
        }) => {
            return Err(failed(format!(
                "the certificate of {key} has CHANGED since it was first seen.\n  \
                 remembered: {}\n  \
                 presented:  {}\n\
                 Someone may be intercepting the connection. If the server's certificate was \
                 replaced on purpose, compare the new fingerprint with the one the server logs \
                 at start (its \"TLS\" line), then remove the line for {key} from {} and try again.",
                fingerprint_text(&expected),
                fingerprint_text(&actual),
                state.known_servers_path().display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    if first_use {
        if let Some(fp) = client.server_fingerprint() {
            state.remember(key, &fp).map_err(failed)?;
            eprintln!(
                "hyve: first connection to {key}: trusting its certificate {} from now on (kept in {})",
                fingerprint_text(&fp),
                state.known_servers_path().display()
            );
        }
    }
    Ok(client)
}

/// Logs `client` in with a password and keeps the token.
async fn password_login(
    client: &Client,
    state: &State,
    key: &str,
    user: &str,
    password: &str,
) -> Result<PathBuf, Failure> {
    let (token, _) = client
        .login(user, password)
        .await
        .map_err(|e| failed(format!("cannot log in to {key} as {user}: {e}")))?;
    state.save_token(key, &token).map_err(failed)
}

/// Opens a logged-in connection to the server; every command connects
/// through here. The kept token is used first; when it has expired (or
/// there is none) the login is done again with HYVE_USER/HYVE_PASSWORD or
/// on the terminal.
pub async fn connect(target: &Target) -> Result<Client, Failure> {
    let key = server_key(&target.url).map_err(usage)?;
    let state = State::open().map_err(failed)?;
    let client = connect_trusted(target, &state, &key).await?;
    if let Some(token) = state.token(&key) {
        match client.login_token(&token).await {
            Ok(_) => return Ok(client),
            Err(ClientError::Protocol { code, .. }) if code == "401" => {
                state.forget_token(&key);
            }
            Err(e) => return Err(e.into()),
        }
    }
    match credentials(&key, None)? {
        Some((user, password)) => {
            password_login(&client, &state, &key, &user, &password).await?;
            Ok(client)
        }
        None => Err(failed(format!(
            "not logged in to {key} (or the login expired): run `hyve login`, or set HYVE_USER and HYVE_PASSWORD"
        ))),
    }
}

/// `hyve login`: a fresh login, whatever token is kept.
pub async fn login(target: &Target, user: Option<String>) -> Result<String, Failure> {
    let key = server_key(&target.url).map_err(usage)?;
    let state = State::open().map_err(failed)?;
    let Some((user, password)) = credentials(&key, user)? else {
        return Err(usage(
            "no terminal to ask for the user and password on: set HYVE_USER and HYVE_PASSWORD"
                .into(),
        ));
    };
    let client = connect_trusted(target, &state, &key).await?;
    let path = password_login(&client, &state, &key, &user, &password).await?;
    Ok(format!(
        "Logged in to {key} as {user}; the token is kept in {}\n",
        path.display()
    ))
}

/// `hyve logout`: ends the kept token on the server and forgets it.
pub async fn logout(target: &Target) -> Result<String, Failure> {
    let key = server_key(&target.url).map_err(usage)?;
    let state = State::open().map_err(failed)?;
    let Some(token) = state.token(&key) else {
        return Ok(format!("Not logged in to {key}\n"));
    };
    let client = connect_trusted(target, &state, &key).await?;
    if client.login_token(&token).await.is_ok() {
        client.logout().await?;
        // The server does not answer auth_clear; a request after it shows
        // it was handled (replies on one connection come in order for
        // rpc/*), before the connection closes.
        let _ = client.call("rpc", "identify", json!({})).await;
    }
    state.forget_token(&key);
    Ok(format!("Logged out of {key}\n"))
}

/// Splits `key=value` arguments.
fn pairs(args: &[String]) -> Result<Vec<(String, String)>, Failure> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| usage(format!("expected KEY=VALUE, got {a:?}")))
        })
        .collect()
}

fn confirm(question: &str) -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(usage(format!(
            "{question} Not asking without a terminal: pass --force"
        )));
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure(e.to_string(), EXIT_FAILED))?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes"))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

async fn execute(target: &Target, json_out: bool, cmd: ClientCommand) -> Result<String, Failure> {
    if let ClientCommand::Console { name } = &cmd {
        return crate::console::run(target, name).await;
    }
    if let ClientCommand::Task(t) = &cmd {
        return crate::tasks::execute(target, json_out, t).await;
    }
    // Arguments are checked before connecting, so usage errors need no server.
    let (action, args) = request_for(&cmd)?;
    if let ClientCommand::Delete { name, force: false } = &cmd {
        if !confirm(&format!("Delete guest '{name}' and all its disks?"))? {
            return Ok("Not deleted.\n".into());
        }
    }
    let client = connect(target).await?;
    let result = client.iohyve(action, args).await?;
    if let ClientCommand::Get { name, prop } = &cmd {
        if result[name].get(prop).is_none() {
            return Err(Failure(
                format!("guest '{name}' has no property '{prop}'"),
                EXIT_FAILED,
            ));
        }
    }
    if json_out {
        return Ok(format!(
            "{}\n",
            serde_json::to_string_pretty(&result).expect("JSON serializes")
        ));
    }
    Ok(human(&cmd, &result))
}

/// Opens a guest's console (`/console/<guest>`): the same certificate
/// trust and login as [`connect`], the token sent on the upgrade request.
pub async fn connect_console(target: &Target, guest: &str) -> Result<crate::console::Ws, Failure> {
    hyve_engine::validate::guest_name(guest).map_err(usage)?;
    let client = connect(target).await?;
    let (token, _) = client
        .token()
        .ok_or_else(|| failed("the server gave no login token"))?;
    let key = server_key(&target.url).map_err(usage)?;
    let state = State::open().map_err(failed)?;
    let options = ConnectOptions {
        trust: trust_for(target, &state, &key)?,
        bearer: Some(token),
        ..Default::default()
    };
    let url = format!("{}/console/{guest}", target.url.trim_end_matches('/'));
    let (ws, _) = hyve_client::open(&url, &options).await?;
    Ok(ws)
}

/// The action and arguments a command sends.
fn request_for(cmd: &ClientCommand) -> Result<(&'static str, Value), Failure> {
    use ClientCommand as C;
    Ok(match cmd {
        C::List => ("listvms", json!({})),
        C::Isolist => ("listisos", json!({})),
        C::Renameiso { iso, new_name } => ("renameiso", json!({"source": iso, "target": new_name})),
        C::Rmiso { iso } => ("rmiso", json!({ "target": iso })),
        C::Setup { settings } => {
            let mut args = json!({});
            for (k, v) in pairs(settings)? {
                let key = match k.as_str() {
                    "pool" => "pool",
                    "nic" | "net" => "nic",
                    other => {
                        return Err(usage(format!("setup takes pool= and nic=, not {other}=")))
                    }
                };
                args[key] = json!(v);
            }
            ("setup", args)
        }
        C::Install { name, iso } => ("install", json!({"name": name, "iso": iso})),
        C::Start { name } => ("start", json!({ "name": name })),
        C::Stop { name, force } => {
            let mut a = json!({ "name": name });
            if *force {
                a["force"] = json!("true");
            }
            ("stop", a)
        }
        C::Consolelog { name, bytes } => {
            let mut a = json!({ "name": name });
            if let Some(b) = bytes {
                a["bytes"] = json!(b);
            }
            ("consolelog", a)
        }
        C::Console { .. } => unreachable!("the console is not a request"),
        C::Create { name, size } => ("create", json!({"name": name, "size": size})),
        C::Delete { name, .. } => ("delete", json!({ "name": name })),
        C::Add { name, size, pool } => {
            let mut a = json!({"name": name, "size": size});
            if let Some(p) = pool {
                a["pool"] = json!(p);
            }
            ("adddisk", a)
        }
        C::Disks { name } => ("listdisks", json!({ "name": name })),
        C::Resize { name, disk, size } => (
            "resizedisk",
            json!({"name": name, "disk": disk, "size": size}),
        ),
        C::Remove { name, disk } => ("deletedisk", json!({"name": name, "disk": disk})),
        C::Version => ("version", json!({})),
        C::Getall { name } | C::Get { name, .. } => ("getprops", json!({ "name": name })),
        C::Set { name, props } => {
            let mut a = json!({ "name": name });
            for (k, v) in pairs(props)? {
                if k == "name" || k == "action" {
                    return Err(usage(format!("'{k}' is not a property that can be set")));
                }
                a[k] = json!(v);
            }
            ("setprop", a)
        }
        C::Task(_) => unreachable!("task commands are run by tasks::execute"),
    })
}

/// The reply, for people.
fn human(cmd: &ClientCommand, r: &Value) -> String {
    use ClientCommand as C;
    let obj = |v: &Value| v.as_object().cloned().unwrap_or_default();
    match cmd {
        C::List => {
            let rows: Vec<Vec<String>> = obj(r)
                .iter()
                .map(|(name, g)| {
                    vec![
                        name.clone(),
                        s(&g["vmm"]),
                        s(&g["running"]),
                        s(&g["rcboot"]),
                        s(&g["description"]),
                    ]
                })
                .collect();
            table::render(
                &["Guest", "VMM?", "Running?", "rcboot?", "Description"],
                &rows,
            )
        }
        C::Isolist => {
            let rows: Vec<Vec<String>> = r
                .as_array()
                .map(|a| a.iter().map(|i| vec![s(i)]).collect())
                .unwrap_or_default();
            table::render(&["ISO"], &rows)
        }
        C::Renameiso { .. } => format!("Renamed ISO {} to {}\n", s(&r["source"]), s(&r["target"])),
        C::Rmiso { .. } => format!("Removed ISO {}\n", s(&r["target"])),
        C::Setup { .. } => format!("Set up pool {} with nic {}\n", s(&r["pool"]), s(&r["nic"])),
        C::Install { .. } => format!(
            "Installing {} from {}: the guest is booting the ISO (hyve console {} to follow)\n",
            s(&r["name"]),
            s(&r["iso"]),
            s(&r["name"])
        ),
        C::Start { .. } => format!("Started {}\n", s(&r["name"])),
        C::Stop { force: true, .. } => format!("Powering off {}\n", s(&r["name"])),
        C::Stop { .. } => format!(
            "Stopping {} (ACPI power button; hyve list shows when it is off)\n",
            s(&r["name"])
        ),
        C::Consolelog { name, .. } => s(&r[name]),
        C::Console { .. } => String::new(),
        C::Create { .. } => format!(
            "Created guest {} with a {} disk0\n",
            s(&r["name"]),
            s(&r["size"])
        ),
        C::Delete { .. } => format!("Deleted guest {}\n", s(&r["name"])),
        C::Add { name, .. } => format!("Added a {} disk to {name}\n", s(&r[name]["size"])),
        C::Disks { .. } => {
            let rows: Vec<Vec<String>> = obj(r)
                .iter()
                .map(|(d, sz)| vec![d.clone(), s(sz)])
                .collect();
            table::render(&["Disk", "Size"], &rows)
        }
        C::Resize { .. } => format!(
            "Resized {} of {} to {}\n",
            s(&r["disk"]),
            s(&r["name"]),
            s(&r["size"])
        ),
        C::Remove { .. } => format!("Removed {} from {}\n", s(&r["disk"]), s(&r["name"])),
        C::Version => format!("{}\n", s(&r["version"])),
        C::Getall { name } => {
            let rows: Vec<Vec<String>> = obj(&r[name])
                .iter()
                .map(|(k, v)| vec![k.clone(), s(v)])
                .collect();
            table::render(&["Property", "Value"], &rows)
        }
        C::Get { name, prop } => match r[name].get(prop) {
            Some(v) => format!("{}\n", s(v)),
            None => String::new(),
        },
        C::Set { name, .. } => obj(&r[name])
            .iter()
            .map(|(k, v)| format!("{name}: {k}={}\n", s(v)))
            .collect(),
        C::Task(_) => unreachable!("task commands are run by tasks::execute"),
    }
}
