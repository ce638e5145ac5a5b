//! The table printed at the end and the JSON written beside it.

use serde_json::{json, Map, Value};

pub struct Row {
    /// The measurement number.
    pub id: u32,
    pub what: String,
    pub hyve: String,
    pub peer: String,
    /// Peer over hyve (how many times faster hyve is), or hyve over peer,
    /// as the row says.
    pub ratio: String,
    pub goal: String,
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub data: Map<String, Value>,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn row(
        &mut self,
        id: u32,
        what: impl Into<String>,
        hyve: impl Into<String>,
        peer: impl Into<String>,
        ratio: impl Into<String>,
        goal: impl Into<String>,
        met: Option<bool>,
    ) {
        self.rows.push(Row {
            id,
            what: what.into(),
            hyve: hyve.into(),
            peer: peer.into(),
            ratio: ratio.into(),
            goal: goal.into(),
            met,
        });
    }

    pub fn set(&mut self, key: &str, v: Value) {
        self.data.insert(key.to_string(), v);
    }

    /// The table, as Markdown (it reads as a table in a terminal too).
    pub fn table(&self) -> String {
        let head = ["#", "measurement", "hyve", "peer", "ratio", "goal", "met?"];
        let rows: Vec<[String; 7]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.id.to_string(),
                    r.what.clone(),
                    r.hyve.clone(),
                    r.peer.clone(),
                    r.ratio.clone(),
                    r.goal.clone(),
                    match r.met {
                        Some(true) => "met".into(),
                        Some(false) => "NOT MET".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::from("|");
            for (i, c) in cells.iter().enumerate() {
                s.push_str(&format!(" {c}{} |", " ".repeat(w[i] - c.chars().count())));
            }
            s.push('\n');
            s
        };
        let mut out = line(&head.map(String::from));
        out.push_str(&line(&w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>()));
        for r in &rows {
            out.push_str(&line(r));
        }
        out
    }

    pub fn json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({
                    "measurement": r.id,
                    "what": r.what,
                    "hyve": r.hyve,
                    "peer": r.peer,
                    "ratio": r.ratio,
                    "goal": r.goal,
                    "met": r.met,
                })
            })
            .collect();
        let mut m = self.data.clone();
        m.insert("table".into(), Value::Array(rows));
        Value::Object(m)
    }
}

/// `12.3x`
pub fn times(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0}x")
    } else {
        format!("{x:.1}x")
    }
}
