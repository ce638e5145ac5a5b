//! The `sysadm/iohyve` class: each action's call into the engine and the
//! exact reply shape of the API document.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use hyve_engine::{Boot, Result, VmSummary};
use hyve_proto::iohyve::{self as req, IohyveRequest, ParseError};
use hyve_proto::ProtocolError;

use super::{forbidden, Outcome};
use crate::auth::Identity;
use crate::App;

fn yes_no(b: bool) -> &'static str {
    if b {
        "YES"
    } else {
        "NO"
    }
}

/// The reading actions, for the 403's sentence.
fn reading_actions() -> String {
    let names: Vec<&str> = req::Action::ALL
        .into_iter()
        .filter(|a| a.is_read_only())
        .map(|a| a.name())
        .collect();
    names.join(", ")
}

pub async fn handle(app: &App, who: &Identity, args: &Value) -> Outcome {
    // A limited user's changing action is refused before anything else is
    // looked at, so the answer says nothing about the arguments.
    let named = args
        .get("action")
        .and_then(Value::as_str)
        .and_then(req::Action::from_name);
    if let Some(a) = named {
        if !a.is_read_only() && !who.may_write() {
            return forbidden(
                who,
                &format!(
                    "{} changes the host; it may run {} only",
                    a.name(),
                    reading_actions()
                ),
            );
        }
    }
    let request = match req::parse(args) {
        Ok(r) => r,
        Err(ParseError::Protocol(p)) => return Outcome::Protocol(p),
        Err(ParseError::Action { action, message }) => {
            return Outcome::action_error(action.name(), &hyve_engine::Error::invalid(message))
        }
    };
    if matches!(request, IohyveRequest::ListVms) {
        let vms = app.engine.list_vms(|name| app.vmm.state_of(name));
        return Outcome::Json(render_list(&vms));
    }
    let action = request.action();
    match run(app, request).await {
        Ok(Some(v)) => Outcome::Ok(json!({ action.name(): v })),
        Ok(None) => Outcome::Protocol(ProtocolError::bad_request(format!(
            "the action {action} is not available on this server"
        ))),
        Err(e) => Outcome::action_error(action.name(), &e),
    }
}

/// The listvms reply's args,
/// `{"listvms":{"<guest>":{"description":…,"rcboot":…,"running":…,"vmm":…},…}}`,
/// written straight from the inventory: as a `Value` tree, 10,000 guests
/// took some 100,000 allocations to build and as many to free, per request.
/// The bytes are those `serde_json` gives for the tree (a test checks).
pub fn render_list(vms: &BTreeMap<String, VmSummary>) -> String {
    use hyve_proto::envelope::json_str;
    let mut out = Vec::with_capacity(16 + vms.len() * 96);
    out.extend_from_slice(b"{\"listvms\":{");
    for (i, (name, s)) in vms.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_str(&mut out, name);
        out.extend_from_slice(b":{\"description\":");
        json_str(&mut out, &s.description);
        for (key, v) in [("rcboot", s.rcboot), ("running", s.running), ("vmm", s.vmm)] {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"\":\"");
            out.extend_from_slice(yes_no(v).as_bytes());
            out.push(b'"');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"}}");
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Runs one action; `None` for actions this server does not offer.
async fn run(app: &App, request: IohyveRequest) -> Result<Option<Value>> {
    let engine = &app.engine;
    let v = match request {
        IohyveRequest::ListVms => unreachable!("listvms is rendered by render_list"),
        IohyveRequest::ListIsos => json!(engine.list_isos().await?),
        IohyveRequest::RenameIso { source, target } => {
            engine.rename_iso(&source, &target).await?;
            json!({ "source": source, "target": target })
        }
        IohyveRequest::RmIso { target } => {
            engine
                .remove_iso(&target, |iso| app.vmm.refuse_iso_in_use(iso))
                .await?;
            json!({ "target": target })
        }
        IohyveRequest::Setup { pool, nic } => {
            let rec = engine.setup(&pool, &nic).await?;
            json!({ "nic": rec.nic, "pool": rec.pool })
        }
        IohyveRequest::IsSetup => {
            json!({ "setup": if engine.is_setup() { "true" } else { "false" } })
        }
        IohyveRequest::Create { name, size } => {
            let rec = engine.create(&name, &size).await?;
            json!({ "name": rec.name, "size": rec.prop("size") })
        }
        IohyveRequest::Delete { name } => {
            engine
                .delete(&name, |rec| {
                    app.vmm.refuse_running(&rec.name, "deleting it")
                })
                .await?;
            app.vmm.forget(&name);
            json!({ "name": name })
        }
        IohyveRequest::AddDisk { name, size, pool } => {
            let (disk_pool, size) = engine.add_disk(&name, &size, pool.as_deref()).await?;
            let mut d = json!({ "size": size.text() });
            if pool.is_some() {
                d["pool"] = json!(disk_pool);
            }
            json!({ name: d })
        }
        IohyveRequest::ListDisks { name } => {
            let m: Map<String, Value> = engine
                .list_disks(&name)?
                .into_iter()
                .map(|(d, s)| (d, Value::from(s)))
                .collect();
            Value::Object(m)
        }
        IohyveRequest::ResizeDisk { name, disk, size } => {
            let size = engine
                .resize_disk(&name, &disk, &size, |rec| {
                    app.vmm.refuse_running(&rec.name, "resizing its disks")
                })
                .await?;
            json!({ "disk": disk, "name": name, "size": size.text() })
        }
        IohyveRequest::DeleteDisk { name, disk } => {
            engine
                .delete_disk(&name, &disk, |rec| {
                    app.vmm.refuse_running(&rec.name, "removing its disks")
                })
                .await?;
            json!({ "disk": disk, "name": name })
        }
        IohyveRequest::Version => json!({ "version": engine.version() }),
        IohyveRequest::GetProps { name } => {
            let props = engine.get_props(&name)?;
            json!({ name: props })
        }
        IohyveRequest::SetProp { name, props } => {
            let set = engine.set_props(&name, &props).await?;
            json!({ name: set })
        }
        IohyveRequest::Install { name, iso } => {
            app.vmm.start(&name, Boot::Cdrom(iso.clone())).await?;
            json!({ "iso": iso, "name": name })
        }
        IohyveRequest::Start { name } => {
            app.vmm.start(&name, Boot::Disk).await?;
            json!({ "name": name })
        }
        IohyveRequest::Stop { name, force } => {
            app.vmm.stop(&name, force).await?;
            json!({ "name": name })
        }
        IohyveRequest::ConsoleLog { name, bytes } => {
            let text = app.vmm.console_log(&name, bytes.as_deref())?;
            json!({ name: text })
        }
        IohyveRequest::FetchIso { url, name, sha256 } => {
            let task = app
                .tasks
                .fetch_iso(&url, name.as_deref(), sha256.as_deref())
                .await?;
            json!({ "command": task.command, "comment": "Task Queued", "queueid": task.id })
        }
    };
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listvms_renders_as_the_value_tree_would() {
        let mut vms = BTreeMap::new();
        for (name, description, flags) in [
            (
                "web01",
                "a \"quoted\" \\ description\n",
                (true, false, true),
            ),
            ("db", "", (false, false, false)),
            ("Zeta-9", "caf\u{e9} \u{1F600} \u{1}", (true, true, true)),
        ] {
            vms.insert(
                name.to_string(),
                VmSummary {
                    description: description.to_string(),
                    rcboot: flags.0,
                    running: flags.1,
                    vmm: flags.2,
                },
            );
        }
        let mut m = Map::new();
        for (name, s) in &vms {
            m.insert(
                name.clone(),
                json!({
                    "description": s.description,
                    "rcboot": yes_no(s.rcboot),
                    "running": yes_no(s.running),
                    "vmm": yes_no(s.vmm),
                }),
            );
        }
        let tree = json!({ "listvms": Value::Object(m) }).to_string();
        assert_eq!(render_list(&vms), tree);
        assert_eq!(render_list(&BTreeMap::new()), r#"{"listvms":{}}"#);
    }
}
