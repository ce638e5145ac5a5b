//! `hyve`: the server (`hyve serve`) and the command line that talks to it,
//! with iohyve's command names.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod cli;
mod console;
mod table;
mod tasks;
mod trust;
mod users;

/// Exit status for a request the server refused or failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status when the server cannot be reached.
pub const EXIT_UNREACHABLE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "hyve",
    version,
    about = "Manage virtual machines through a hyve (SysAdm iohyve) server"
)]
struct Cli {
    /// The server to talk to.
    #[arg(
        long,
        global = true,
        env = "HYVE_SERVER",
        default_value = "wss://127.0.0.1:12150"
    )]
    server: String,
    /// Trust servers whose certificate a CA in this PEM file signed, instead
    /// of remembering each server's certificate on first use.
    #[arg(long, global = true, env = "HYVE_CA", value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Print the server's reply as JSON, for scripts.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    data: users::DataArgs,
    /// WebSocket address [default: 127.0.0.1:12150]
    #[arg(long, value_name = "ADDR:PORT")]
    ws_listen: Option<std::net::SocketAddr>,
    /// REST address [default: 127.0.0.1:12151]
    #[arg(long, value_name = "ADDR:PORT")]
    rest_listen: Option<std::net::SocketAddr>,
    /// Plain ws:// and http:// (loopback addresses only).
    #[arg(long)]
    no_tls: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Manage the users of the server's embedded account file.
    #[command(subcommand)]
    User(users::UserCommand),
    /// Log in to the server and keep the token (user and password from
    /// HYVE_USER and HYVE_PASSWORD, or asked for).
    Login {
        /// The user to log in as [default: HYVE_USER, or asked for]
        #[arg(long)]
        user: Option<String>,
    },
    /// End the login to the server and forget its token.
    Logout,
    #[command(flatten)]
    Client(cli::ClientCommand),
}

/// Makes the allocator give large blocks back to the system when they are
/// freed. glibc serves a block above its mmap threshold with its own
/// mapping, but raises that threshold to the size of any such block freed:
/// after one login (argon2 works in 19 MiB) every later one came from the
/// heap of whatever thread ran it and stayed there, so a server that had
/// seen logins on many threads kept hundreds of MB it no longer used. A
/// fixed threshold keeps large blocks mapped and returned on free. Called
/// before any thread exists.
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; no thread runs yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Serve(_)) {
        return_large_blocks();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hyve: cannot start: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    match cli.command {
        Command::Serve(a) => match rt.block_on(serve(a)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hyve: {e:#}");
                ExitCode::from(EXIT_FAILED)
            }
        },
        Command::User(cmd) => cli::finish(users::run(cmd)),
        Command::Login { user } => {
            let target = cli::Target::new(&cli.server, cli.ca.as_deref());
            cli::finish(rt.block_on(cli::login(&target, user)))
        }
        Command::Logout => {
            let target = cli::Target::new(&cli.server, cli.ca.as_deref());
            cli::finish(rt.block_on(cli::logout(&target)))
        }
        Command::Client(c) => {
            let target = cli::Target::new(&cli.server, cli.ca.as_deref());
            rt.block_on(cli::run(&target, cli.json, c))
        }
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let overrides = hyve_server::Overrides {
        data_dir: a.data.data_dir,
        ws_listen: a.ws_listen,
        rest_listen: a.rest_listen,
        no_tls: a.no_tls,
    };
    let config = hyve_server::Config::load(a.data.config.as_deref(), &overrides)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .map_err(|e| anyhow::anyhow!("log filter {:?}: {e}", config.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    // The handlers go in before the server says it is listening: a SIGTERM
    // sent as soon as it does must stop it cleanly, not be lost.
    let stop = stop_signal()?;
    let server = hyve_server::Server::bind(config).await?;
    server.serve(stop).await
}

/// Resolves on SIGINT or SIGTERM; the handlers are installed at the call.
fn stop_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
