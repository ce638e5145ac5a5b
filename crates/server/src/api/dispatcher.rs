//! `rpc/dispatcher`: the background tasks. `{"action":"list"}` answers
//! `{"jobs":{"<id>":<task>}}`, each task in the shape of its dispatcher
//! event; `{"action":"kill","job_id":<id or [ids]>}` answers
//! `{"killed":{"jobs":[<ids>]}}` once each is finished and its partial
//! file gone.

use serde_json::{json, Map, Value};

use hyve_engine::Error;
use hyve_proto::envelope::json_type_name;
use hyve_proto::ProtocolError;

use super::{forbidden, Outcome};
use crate::auth::Identity;
use crate::App;

pub async fn handle(app: &App, who: &Identity, args: &Value) -> Outcome {
    let Value::Object(obj) = args else {
        return Outcome::Protocol(ProtocolError::bad_request(format!(
            "dispatcher arguments must be an object, not {}",
            json_type_name(args)
        )));
    };
    match obj.get("action").and_then(Value::as_str) {
        Some("list") => {
            let jobs: Map<String, Value> = app.tasks.list().into_iter().collect();
            Outcome::Ok(json!({ "jobs": jobs }))
        }
        Some("kill") if !who.may_write() => forbidden(who, "killing a task needs full access"),
        Some("kill") => {
            let ids: Vec<String> = match obj.get("job_id") {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => a
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect(),
                None => {
                    return Outcome::action_error(
                        "kill",
                        &Error::invalid("Missing required key 'job_id'"),
                    )
                }
                Some(other) => {
                    return Outcome::action_error(
                        "kill",
                        &Error::invalid(format!(
                            "'job_id' must be a task id or an array of them, not {}",
                            json_type_name(other)
                        )),
                    )
                }
            };
            match app.tasks.kill(&ids).await {
                Ok(killed) => Outcome::Ok(json!({ "killed": { "jobs": killed } })),
                Err(e) => Outcome::action_error("kill", &e),
            }
        }
        Some(other) => Outcome::Protocol(ProtocolError::bad_request(format!(
            "unknown dispatcher action {:?}: use list or kill",
            hyve_proto::iohyve::truncate(other, 64)
        ))),
        None => Outcome::Protocol(ProtocolError::bad_request(
            "dispatcher request has no string 'action' (list or kill)",
        )),
    }
}
