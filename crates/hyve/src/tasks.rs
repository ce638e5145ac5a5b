//! The commands about background tasks: `fetch` (with a progress bar fed
//! by the server's dispatcher events), `tasks` and `kill`.

use std::io::IsTerminal;
use std::time::Duration;

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use hyve_client::action_error;

use crate::cli::{connect, Failure, Target};
use crate::{table, EXIT_FAILED, EXIT_UNREACHABLE};

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Download an installation ISO into the store (http, https, ftp or
    /// file URL) and show its progress until it is done.
    Fetch {
        url: String,
        /// The ISO's name in the store [default: the URL's file name].
        #[arg(long)]
        name: Option<String>,
        /// The expected SHA-256 (hex); a mismatch discards the download.
        #[arg(long, value_name = "HEX")]
        sha256: Option<String>,
        /// Print the task id and return at once; the download goes on.
        #[arg(long)]
        detach: bool,
    },
    /// List background tasks (downloads), running and finished.
    Tasks,
    /// Kill running or pending tasks by id; their partial files are removed.
    Kill {
        #[arg(required = true, value_name = "TASK_ID")]
        ids: Vec<String>,
    },
}

fn pretty(v: &Value) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(v).expect("JSON serializes")
    )
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_default()
}

/// The return code of a finished task's payload.
fn return_code(args: &Value) -> Option<String> {
    args["process_details"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.starts_with("return_codes/"))
        .map(|(_, v)| s(v))
}

pub async fn execute(
    target: &Target,
    json_out: bool,
    cmd: &TaskCommand,
) -> Result<String, Failure> {
    match cmd {
        TaskCommand::Fetch {
            url,
            name,
            sha256,
            detach,
        } => fetch(target, json_out, url, name, sha256, *detach).await,
        TaskCommand::Tasks => {
            let client = connect(target).await?;
            let r = client
                .call("rpc", "dispatcher", json!({"action": "list"}))
                .await?;
            if json_out {
                return Ok(pretty(&r["jobs"]));
            }
            let rows: Vec<Vec<String>> = r["jobs"]
                .as_object()
                .map(|jobs| {
                    jobs.iter()
                        .map(|(id, t)| {
                            let d = &t["process_details"];
                            vec![
                                id.clone(),
                                s(&t["state"]),
                                s(&t["percent_done"]),
                                return_code(t).unwrap_or_default(),
                                s(&d["time_started"]),
                                s(&d["time_finished"]),
                                d["cmd_list"][0].as_str().unwrap_or("").to_string(),
                                s(&t["error"]),
                            ]
                        })
                        .collect()
                })
                .unwrap_or_default();
            Ok(table::render(
                &[
                    "Task", "State", "Done", "Code", "Started", "Finished", "Command", "Error",
                ],
                &rows,
            ))
        }
        TaskCommand::Kill { ids } => {
            let client = connect(target).await?;
            let r = client
                .call(
                    "rpc",
                    "dispatcher",
                    json!({"action": "kill", "job_id": ids}),
                )
                .await?;
            if let Some(msg) = r.get("kill").and_then(action_error) {
                return Err(Failure(msg.to_string(), EXIT_FAILED));
            }
            if json_out {
                return Ok(pretty(&r));
            }
            Ok(r["killed"]["jobs"]
                .as_array()
                .map(|a| a.iter().map(|id| format!("Killed {}\n", s(id))).collect())
                .unwrap_or_default())
        }
    }
}

async fn fetch(
    target: &Target,
    json_out: bool,
    url: &str,
    name: &Option<String>,
    sha256: &Option<String>,
    detach: bool,
) -> Result<String, Failure> {
    let client = connect(target).await?;
    // Subscribe before asking, so that no event of the task can be missed.
    let mut events = if detach {
        None
    } else {
        client.subscribe(&["dispatcher"]).await?;
        client.take_events()
    };
    let mut args = json!({ "url": url });
    if let Some(n) = name {
        args["name"] = json!(n);
    }
    if let Some(h) = sha256 {
        args["sha256"] = json!(h);
    }
    let reply = client.iohyve("fetchiso", args).await?;
    let id = s(&reply["queueid"]);
    let Some(events) = events.as_mut() else {
        return Ok(if json_out {
            pretty(&reply)
        } else {
            format!("{id}\n")
        });
    };
    let bar = ProgressBar::with_draw_target(
        Some(100),
        if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos:>3}% {prefix} ETA {eta}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar.println(format!(
        "Task {id} (Ctrl-C leaves it running; `hyve kill '{id}'` stops it)"
    ));
    bar.enable_steady_tick(Duration::from_millis(250));
    loop {
        let Some(frame) = events.recv().await else {
            bar.abandon();
            return Err(Failure(
                format!(
                    "the connection to the server closed before task {id} finished; `hyve tasks` shows how it ends"
                ),
                EXIT_UNREACHABLE,
            ));
        };
        let a = &frame["args"];
        if a["process_details"]["process_id"] != json!(id) {
            continue;
        }
        bar.set_message(s(&a["filename"]));
        if let Some(p) = a["percent_done"]
            .as_str()
            .and_then(|p| p.trim_end_matches('%').parse::<u64>().ok())
        {
            bar.set_position(p);
        }
        if let Some(r) = a["download_rate"].as_str() {
            bar.set_prefix(r.to_string());
        }
        if a["state"] != "finished" {
            continue;
        }
        bar.finish_and_clear();
        let rc = return_code(a).unwrap_or_default();
        if rc == "0" {
            return Ok(if json_out {
                pretty(a)
            } else {
                format!("Fetched {} (task {id})\n", s(&a["filename"]))
            });
        }
        return Err(Failure(
            format!(
                "task {id} failed (return code {rc}): {}",
                a["error"].as_str().unwrap_or("no reason given")
            ),
            EXIT_FAILED,
        ));
    }
}
