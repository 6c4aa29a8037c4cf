//! Checks every vector of testdata/vectors.json against the core.
// Test helpers: a failed unwrap is a failed test (allow-unwrap-in-tests
// covers #[test] functions, not the helpers they call).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;
use tandem_core::{Ctx, Limits, Registry, StepRequest};

fn vectors() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../testdata/vectors.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn steps(v: &Value) -> Vec<StepRequest> {
    v["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| StepRequest {
            op: s["op"].as_str().expect("op").to_owned(),
            params: s
                .get("params")
                .and_then(Value::as_object)
                .map(|p| p.iter().map(|(k, v)| (k.clone(), v.as_str().expect("string param").to_owned())).collect())
                .unwrap_or_else(BTreeMap::new),
        })
        .collect()
}

#[test]
fn every_vector_matches() {
    let doc = vectors();
    assert_eq!(doc["version"], 1);
    let plain = Registry::new(Limits::default(), false);
    let debug = Registry::new(Limits::default(), true);
    let list = doc["vectors"].as_array().expect("vectors");
    assert!(list.len() > 50, "vectors file looks truncated");
    let mut failures = Vec::new();
    for v in list {
        let name = v["name"].as_str().expect("name");
        let reg = if v.get("debug_ops").and_then(Value::as_bool).unwrap_or(false) { &debug } else { &plain };
        let input = B64.decode(v["input_b64"].as_str().expect("input_b64")).expect("base64 input");
        let attempt = v.get("attempt").and_then(Value::as_u64).unwrap_or(0) as u32;
        let ctx = Ctx { attempt, ..Ctx::new(reg.limits()) };
        let got = reg.run(&steps(v), &input, &ctx);
        let problem = if let Some(exp) = v.get("expected_b64") {
            let exp = B64.decode(exp.as_str().expect("expected_b64")).expect("base64 expected");
            match got {
                Ok(out) if out.data == exp => None,
                Ok(out) => Some(format!("output differs ({} bytes, want {})", out.data.len(), exp.len())),
                Err(e) => Some(format!("error {e}")),
            }
        } else if let Some(exp) = v.get("expected_json") {
            match got {
                Ok(out) => match serde_json::from_slice::<Value>(&out.data) {
                    Ok(j) if &j == exp => None,
                    Ok(j) => Some(format!("json differs: {j}")),
                    Err(e) => Some(format!("output is not JSON: {e}")),
                },
                Err(e) => Some(format!("error {e}")),
            }
        } else if let Some(exp) = v.get("expected_error") {
            match got {
                Ok(_) => Some("succeeded, want an error".to_owned()),
                Err(e) => {
                    let mut p = None;
                    if e.reason().as_str() != exp["reason"] || e.code() as i64 != exp["code"].as_i64().expect("code") {
                        p = Some(format!("got {}/{} ({e})", e.reason(), e.code() as i32));
                    }
                    if let Some(m) = exp.get("message").and_then(Value::as_str)
                        && m != e.to_string()
                    {
                        p = Some(format!("message {:?}, want {m:?}", e.to_string()));
                    }
                    p
                }
            }
        } else {
            Some("vector has no expectation".to_owned())
        };
        if let Some(p) = problem {
            failures.push(format!("{name}: {p}"));
        }
    }
    assert!(failures.is_empty(), "{} vectors failed:\n{}", failures.len(), failures.join("\n"));
}
