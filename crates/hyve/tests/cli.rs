//! The `hyve` command line against a real server: output for people and
//! for scripts, exit codes, and the server's sentence on stderr.

mod common;

use std::process::Output;

use common::*;
use serde_json::Value;

fn hyve(server: &TestServer, args: &[&str]) -> Output {
    server.cli().args(args).output().unwrap()
}

fn ok(server: &TestServer, args: &[&str]) -> String {
    let out = hyve(server, args);
    assert!(
        out.status.success(),
        "hyve {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());
    String::from_utf8(out.stdout).unwrap()
}

fn fails(server: &TestServer, args: &[&str], code: i32) -> String {
    let out = hyve(server, args);
    assert_eq!(out.status.code(), Some(code), "hyve {args:?}");
    assert!(out.stdout.is_empty(), "hyve {args:?} printed on stdout");
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn a_session_at_the_command_line() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    assert_eq!(
        ok(&server, &["setup", "pool=tank", "net=re0"]),
        "Set up pool tank with nic re0\n"
    );
    assert_eq!(
        ok(&server, &["create", "web01", "64M"]),
        "Created guest web01 with a 64M disk0\n"
    );
    ok(&server, &["create", "db", "32M"]);
    ok(
        &server,
        &["set", "web01", "ram=1G", "description=front end"],
    );
    let list = ok(&server, &["list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines[0], "Guest  VMM?  Running?  rcboot?  Description");
    assert!(
        lines[1].starts_with("db     NO    NO        NO       "),
        "{list}"
    );
    assert_eq!(lines[2], "web01  NO    NO        NO       front end");
    assert_eq!(ok(&server, &["get", "web01", "ram"]), "1G\n");
    let all = ok(&server, &["getall", "web01"]);
    assert!(all.starts_with("Property     Value\n"), "{all}");
    assert!(all.contains("\ntap          tap0\n"), "{all}");
    ok(&server, &["add", "web01", "16M"]);
    ok(&server, &["resize", "web01", "disk1", "32M"]);
    assert_eq!(
        ok(&server, &["disks", "web01"]),
        "Disk   Size\ndisk0  64M\ndisk1  32M\n"
    );
    assert_eq!(
        ok(&server, &["remove", "web01", "disk1"]),
        "Removed disk1 from web01\n"
    );
    std::fs::write(iso_dir(dir.path()).join("a.iso"), b"x").unwrap();
    ok(&server, &["renameiso", "a.iso", "b.iso"]);
    assert_eq!(ok(&server, &["isolist"]), "ISO\nb.iso\n");
    ok(&server, &["rmiso", "b.iso"]);
    assert!(ok(&server, &["version"]).starts_with("hyve "));

    // --json prints exactly what the server answered.
    let json: Value = serde_json::from_str(&ok(&server, &["--json", "disks", "web01"])).unwrap();
    assert_eq!(json, serde_json::json!({"disk0": "64M"}));

    // Delete asks first; without a terminal it refuses unless forced.
    let err = fails(&server, &["delete", "db"], 2);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(ok(&server, &["delete", "-f", "db"]), "Deleted guest db\n");
}

#[test]
fn errors_go_to_stderr_with_a_nonzero_status() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    ok(&server, &["setup", "pool=tank", "nic=re0"]);
    let err = fails(&server, &["create", "../x", "1G"], 1);
    assert!(err.starts_with("hyve: invalid guest name '../x'"), "{err}");
    let err = fails(&server, &["getall", "nope"], 1);
    assert_eq!(err, "hyve: No such guest 'nope'\n");
    let err = fails(&server, &["--json", "create", "x", "lots"], 1);
    assert!(err.contains("invalid size 'lots'"), "{err}");
    ok(&server, &["create", "x", "16M"]);
    let err = fails(&server, &["get", "x", "colour"], 1);
    assert!(err.contains("no property 'colour'"), "{err}");
    // Usage mistakes are caught before any request.
    fails(&server, &["set", "x", "ram"], 2);
    fails(&server, &["setup", "pool=tank", "kmod=1"], 2);
}

#[test]
fn the_server_comes_from_the_environment_and_unreachable_is_its_own_status() {
    let dir = data_dir();
    let server = TestServer::start(dir.path());
    // cli() points HYVE_SERVER at the server.
    let out = server.cli().arg("version").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("wss://{}", l.local_addr().unwrap());
    drop(l);
    let out = server
        .cli()
        .args(["--server", &url, "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}
