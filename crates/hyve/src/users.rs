//! `hyve user add|del|passwd|list`: the embedded account file of a data
//! dir, edited directly (so it works before the server first starts, and
//! while it runs: the server re-reads the file when it changes).

use std::io::{IsTerminal, Read};
use std::path::PathBuf;

use clap::{Args, Subcommand};

use hyve_server::auth::accounts::file::UserDb;
use hyve_server::auth::Role;
use hyve_server::config::Backend;

use crate::cli::Failure;
use crate::EXIT_FAILED;

/// Which server's accounts: the same `--config` and `--data-dir` as
/// `hyve serve`.
#[derive(Args, Clone, Default)]
pub struct DataArgs {
    /// A TOML config file; without it the embedded defaults apply.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where guests, ISOs and the server's state are kept.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user of the embedded account file.
    Add {
        name: String,
        /// full: every action; limited: reading actions only.
        #[arg(long, value_parser = ["full", "limited"])]
        role: String,
        /// Read the password from standard input (one line) instead of
        /// asking twice on the terminal.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Remove a user; their logins end at their next request.
    Del {
        name: String,
        #[command(flatten)]
        data: DataArgs,
    },
    /// Set a user's password (and, with --role, their role).
    Passwd {
        name: String,
        #[arg(long, value_parser = ["full", "limited"])]
        role: Option<String>,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        data: DataArgs,
    },
    /// List the users and their roles.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
}

fn fail(msg: impl Into<String>) -> Failure {
    Failure(msg.into(), EXIT_FAILED)
}

fn db(data: &DataArgs) -> Result<UserDb, Failure> {
    let overrides = hyve_server::Overrides {
        data_dir: data.data_dir.clone(),
        ..Default::default()
    };
    let config = hyve_server::Config::load(data.config.as_deref(), &overrides)
        .map_err(|e| fail(format!("{e:#}")))?;
    if config.auth.backend == Backend::Pam {
        return Err(fail(
            "this server's accounts come from PAM ([auth] backend = \"pam\"): manage them with the host's tools (useradd, passwd, and the admin and operator groups)",
        ));
    }
    UserDb::open(&config.state_dir()).map_err(|e| fail(format!("{e:#}")))
}

/// The new password: one line of stdin, or asked twice on the terminal.
fn new_password(from_stdin: bool, name: &str) -> Result<String, Failure> {
    if from_stdin {
        let mut s = String::new();
        std::io::stdin()
            .take(64 * 1024)
            .read_to_string(&mut s)
            .map_err(|e| fail(format!("cannot read the password from stdin: {e}")))?;
        let line = s.lines().next().unwrap_or("").to_string();
        return Ok(line);
    }
    if !std::io::stdin().is_terminal() {
        return Err(Failure(
            "no terminal to ask for the password on: pass --password-stdin".into(),
            2,
        ));
    }
    let a = rpassword::prompt_password(format!("New password for {name}: "))
        .map_err(|e| fail(e.to_string()))?;
    let b = rpassword::prompt_password("Again: ").map_err(|e| fail(e.to_string()))?;
    if a != b {
        return Err(fail("the passwords differ; nothing changed"));
    }
    Ok(a)
}

fn role(s: &str) -> Role {
    Role::from_name(s).expect("clap checked the value")
}

pub fn run(cmd: UserCommand) -> Result<String, Failure> {
    match cmd {
        UserCommand::Add {
            name,
            role: r,
            password_stdin,
            data,
        } => {
            let db = db(&data)?;
            let pw = new_password(password_stdin, &name)?;
            db.add(&name, role(&r), &pw)
                .map_err(|e| fail(format!("{e:#}")))?;
            Ok(format!("Added user {name} ({r} access)\n"))
        }
        UserCommand::Del { name, data } => {
            db(&data)?
                .delete(&name)
                .map_err(|e| fail(format!("{e:#}")))?;
            Ok(format!("Removed user {name}\n"))
        }
        UserCommand::Passwd {
            name,
            role: r,
            password_stdin,
            data,
        } => {
            let db = db(&data)?;
            let pw = new_password(password_stdin, &name)?;
            db.set_password(&name, &pw, r.as_deref().map(role))
                .map_err(|e| fail(format!("{e:#}")))?;
            Ok(format!("Changed the password of {name}\n"))
        }
        UserCommand::List { data } => {
            let users = db(&data)?.list().map_err(|e| fail(format!("{e:#}")))?;
            let rows: Vec<Vec<String>> = users
                .into_iter()
                .map(|(n, r)| vec![n, r.to_string()])
                .collect();
            Ok(crate::table::render(&["User", "Role"], &rows))
        }
    }
}
