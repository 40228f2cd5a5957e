//! `docs/openapi.json` against what the API serves: the routes, the error codes, and the
//! fields of the types the routes render.

use std::collections::BTreeSet;

use serde_json::Value;
use wraft_proto::RequestError;

use super::reply::{HTTP_ERROR_CODES, error_status};
use super::routes::{OPENAPI, ROUTES};

fn openapi() -> Value {
    serde_json::from_str(OPENAPI).expect("docs/openapi.json is JSON")
}

/// The document lists exactly the routes `routes::handle` serves.
#[test]
fn openapi_paths_are_exactly_the_served_routes() {
    let doc = openapi();
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let served: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, served, "docs/openapi.json and ROUTES differ");
}

/// Every error code the API can answer is in the document's enum, and nothing else.
#[test]
fn openapi_error_codes_are_the_ones_answered() {
    let doc = openapi();
    let documented: BTreeSet<String> = doc["components"]["schemas"]["Error"]["properties"]["error"]
        ["properties"]["code"]["enum"]
        .as_array()
        .expect("enum")
        .iter()
        .map(|v| v.as_str().expect("code").to_owned())
        .collect();
    let mut answered: BTreeSet<String> = HTTP_ERROR_CODES.iter().map(|c| c.to_string()).collect();
    let samples = [
        RequestError::NotLeader { leader: None },
        RequestError::Busy(String::new()),
        RequestError::Timeout(String::new()),
        RequestError::Rejected(String::new()),
        RequestError::NoSuchMachine(String::new()),
        RequestError::App {
            code: 1,
            message: String::new(),
        },
        RequestError::MachineFault(String::new()),
        RequestError::Internal(String::new()),
        RequestError::SessionUnknown { client_id: 1 },
        RequestError::Forbidden(String::new()),
    ];
    for e in &samples {
        for command in [false, true] {
            answered.insert(error_status(e, command).1.to_owned());
        }
    }
    assert_eq!(documented, answered);
}

/// The JSON the routes render (serde of the protocol types) has the fields the document's
/// schemas name.
#[test]
fn openapi_schemas_match_the_rendered_types() {
    let doc = openapi();
    let schema_fields = |name: &str| -> BTreeSet<String> {
        doc["components"]["schemas"][name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name}"))
            .keys()
            .cloned()
            .collect()
    };
    let fields =
        |v: Value| -> BTreeSet<String> { v.as_object().expect("object").keys().cloned().collect() };
    let machine = wraft_proto::MachineInfo {
        name: "kv".into(),
        kind: "kv".into(),
        version: "1".into(),
        module_sha256: String::new(),
        deployed_at: 1,
        healthy: true,
    };
    let status = wraft_proto::Status {
        id: 1,
        role: "leader".into(),
        term: 1,
        leader: Some(1),
        commit_index: 1,
        applied_index: 1,
        last_index: 1,
        snapshot_index: 0,
        log_first_index: 1,
        snapshot_creating: None,
        voters: vec![1],
        learners: vec![],
        peers: vec![wraft_proto::PeerStatus {
            id: 2,
            voter: true,
            match_index: 1,
            next_index: 2,
            state: "replicate".into(),
        }],
        machines: vec![machine.clone()],
        apply_halted: None,
    };
    let snapshot = wraft_proto::SnapshotListing {
        index: 1,
        term: 1,
        file_bytes: 1,
        digest: String::new(),
        path: String::new(),
        voters: vec![],
        learners: vec![],
    };
    let transfer = wraft_proto::TransferStatus {
        sending: true,
        peer: 2,
        index: 1,
        file_bytes: 1,
        done_bytes: 1,
        resumed_from: 0,
        elapsed_ms: 1,
        bytes_per_sec: 1,
    };
    let to = |v: &dyn erased::Ser| v.value();
    assert_eq!(fields(to(&status)), schema_fields("Status"));
    assert_eq!(fields(to(&machine)), schema_fields("Machine"));
    assert_eq!(fields(to(&status.peers[0])), schema_fields("Peer"));
    assert_eq!(fields(to(&snapshot)), schema_fields("Snapshot"));
    assert_eq!(
        fields(super::routes::transfer_json(1, &transfer)),
        schema_fields("Transfer")
    );
}

mod erased {
    pub(super) trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).expect("serializes")
        }
    }
}
