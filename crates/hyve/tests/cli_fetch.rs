//! The `hyve fetch`, `hyve tasks` and `hyve kill` commands against a real
//! server: output, exit status and files.

mod common;

use std::process::Output;

use common::origin::{content, File, Origin};
use common::*;

async fn hyve(server: &TestServer, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::from(server.cli());
    cmd.args(args);
    cmd.output().await.expect("run hyve")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_tasks_and_kill_from_the_command_line() {
    let dir = data_dir();
    let origin = Origin::http().await;
    let data = content(500_000);
    let url = origin.put("/cli.iso", File::new(data.clone()));
    let server = TestServer::start(dir.path());
    setup(&server.client().await).await;

    let out = hyve(&server, &["fetch", &url]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("Fetched cli.iso (task {"), "{stdout}");
    assert_eq!(
        std::fs::read(iso_dir(dir.path()).join("cli.iso")).unwrap(),
        data
    );

    // A failure: the server's sentence on stderr, exit status 1, no file.
    let out = hyve(&server, &["fetch", &format!("{}/gone.iso", origin.base)]).await;
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("failed (return code 1)") && err.contains("404 Not Found"),
        "{err}"
    );
    // Refused at once.
    let out = hyve(&server, &["fetch", "gopher://example.org/a.iso"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("unsupported URL scheme 'gopher'"));

    // --detach prints the task id and returns.
    let out = hyve(&server, &["fetch", "--detach", "--name", "copy.iso", &url]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_string();
    assert!(
        id.starts_with('{') && id.ends_with('}') && id.len() == 38,
        "{id}"
    );
    let c = server.client().await;
    common::tasks::wait_finished(&c, &id, 120).await;

    let out = hyve(&server, &["tasks"]).await;
    assert!(out.status.success());
    let table = text(&out.stdout);
    assert!(table.starts_with("Task "), "{table}");
    assert!(table.contains(&id) && table.contains("finished"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");

    let out = hyve(&server, &["kill", &id]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("has finished already"));
    let mut names = common::tasks::names_in(&iso_dir(dir.path()));
    names.sort();
    assert_eq!(names, ["cli.iso", "copy.iso"]);
}
