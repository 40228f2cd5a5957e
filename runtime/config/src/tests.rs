use super::*;

const MINIMAL: &str = r#"
[node]
id = 1
data_dir = "/tmp/n1"
listen = "127.0.0.1:7001"

[cluster]
members = { 1 = "127.0.0.1:7001", 2 = "127.0.0.1:7002" }

[tls]
dir = "/tmp/certs"
"#;

#[test]
fn minimal_file_gets_documented_defaults() {
    let cfg = NodeConfig::parse(MINIMAL).unwrap();
    assert_eq!(cfg.node.id, 1);
    assert_eq!(cfg.storage.fsync, FsyncPolicy::Durable);
    assert_eq!(cfg.snapshot.retain_count, 2);
    assert_eq!(cfg.address_book().len(), 2);
}

#[test]
fn unknown_key_is_rejected_with_its_name() {
    let text = format!("{MINIMAL}\n[raft]\nheartbeat_ms = 5\n");
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("heartbeat_ms"), "{err}");
}

#[test]
fn limits_are_named_max_last_and_the_old_max_first_names_still_parse() {
    let new = format!(
        "{MINIMAL}\n[raft]\ninflight_append_msgs_max = 8\nappend_entries_max = 100\n\
         append_bytes_max = 65536\npending_proposals_max = 500\n\
         [snapshot]\nlog_entries_max = 7000\n"
    );
    let old = format!(
        "{MINIMAL}\n[raft]\nmax_inflight_append_msgs = 8\nmax_append_entries = 100\n\
         max_append_bytes = 65536\nmax_pending_proposals = 500\n\
         [snapshot]\nmax_log_entries = 7000\n"
    );
    for text in [new, old] {
        let cfg = NodeConfig::parse(&text).unwrap();
        let r = &cfg.raft;
        assert_eq!((r.inflight_append_msgs_max, r.append_entries_max), (8, 100));
        assert_eq!((r.append_bytes_max, r.pending_proposals_max), (65536, 500));
        assert_eq!(cfg.snapshot.log_entries_max, 7000);
    }
}

#[test]
fn every_problem_is_listed_not_only_the_first() {
    let text = format!(
        "{MINIMAL}\n[raft]\nheartbeat_interval_ms = 0\n[snapshot]\nchunk_bytes = 1\n\
         [client]\nconnections_max = 0\n"
    );
    let cfg: NodeConfig = toml::from_str(&text).unwrap();
    let keys: Vec<String> = cfg
        .problems()
        .iter()
        .map(|p| match p {
            ConfigError::Invalid { key, .. } => (*key).to_owned(),
            other => other.to_string(),
        })
        .collect();
    for want in [
        "raft.heartbeat_interval_ms",
        "snapshot.chunk_bytes",
        "client.connections_max",
    ] {
        assert!(
            keys.iter().any(|k| k == want),
            "{want} missing from {keys:?}"
        );
    }
    // validate() reports the first of them, as before.
    let first = cfg.validate().unwrap_err().to_string();
    assert!(first.contains("raft.heartbeat_interval_ms"), "{first}");
}

#[test]
fn members_may_be_dns_names_and_a_malformed_address_names_the_key() {
    let text = MINIMAL.replace("2 = \"127.0.0.1:7002\"", "2 = \"node-2.wraft.svc:7002\"");
    let cfg = NodeConfig::parse(&text).unwrap();
    assert_eq!(cfg.cluster.members[&2].to_string(), "node-2.wraft.svc:7002");
    assert!(cfg.cluster.members[&2].is_name());
    let round = NodeConfig::parse(&cfg.to_toml()).unwrap();
    assert_eq!(round.cluster.members, cfg.cluster.members);
    let bad = MINIMAL.replace("2 = \"127.0.0.1:7002\"", "2 = \"node 2:7002\"");
    let err = NodeConfig::parse(&bad).unwrap_err().to_string();
    assert!(
        err.contains("node 2:7002") && err.contains("HOST:PORT"),
        "{err}"
    );
    let listen_name = MINIMAL.replace("listen = \"127.0.0.1:7001\"", "listen = \"node-1:7001\"");
    let err = NodeConfig::parse(&listen_name).unwrap_err().to_string();
    assert!(err.contains("listen"), "a node binds an IP address: {err}");
}

#[test]
fn out_of_range_value_names_the_key() {
    let text = format!("{MINIMAL}\n[snapshot]\nchunk_bytes = 1\n");
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("snapshot.chunk_bytes"), "{err}");
}

#[test]
fn response_write_timeout_defaults_to_30_s_and_is_range_checked() {
    let cfg = NodeConfig::parse(MINIMAL).unwrap();
    assert_eq!(cfg.client.response_write_timeout_ms, 30_000);
    let text = format!("{MINIMAL}\n[client]\nresponse_write_timeout_ms = 0\n");
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("client.response_write_timeout_ms"), "{err}");
}

#[test]
fn preallocation_is_off_or_between_2_bytes_and_a_segment() {
    for bad in [
        "preallocate_bytes = 1",
        "segment_bytes = 1048576\npreallocate_bytes = 1048577",
    ] {
        let text = format!("{MINIMAL}\n[storage]\n{bad}\n");
        let err = NodeConfig::parse(&text).unwrap_err().to_string();
        assert!(err.contains("storage.preallocate_bytes"), "{bad}: {err}");
    }
    for good in ["preallocate_bytes = 0", "preallocate_bytes = 2"] {
        NodeConfig::parse(&format!("{MINIMAL}\n[storage]\n{good}\n")).unwrap();
    }
}

#[test]
fn shutdown_timeout_has_a_default_and_is_bounded() {
    let cfg = NodeConfig::parse(MINIMAL).unwrap();
    assert_eq!(cfg.node.shutdown_timeout_ms, SHUTDOWN_TIMEOUT_MS_DEFAULT);
    let text = MINIMAL.replacen("[node]", "[node]\nshutdown_timeout_ms = 250", 1);
    assert_eq!(
        NodeConfig::parse(&text).unwrap().node.shutdown_timeout_ms,
        250
    );
    let text = MINIMAL.replacen("[node]", "[node]\nshutdown_timeout_ms = 0", 1);
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("node.shutdown_timeout_ms"), "{err}");
    // Written out with the others (the fuzz corpus's full-defaults seed is this text).
    let full = NodeConfig::parse(MINIMAL).unwrap().to_toml();
    assert!(full.contains("\nshutdown_timeout_ms = 5000\n"), "{full}");
}

#[test]
fn watch_history_bounds_have_defaults_and_are_range_checked_by_key() {
    let cfg = NodeConfig::parse(MINIMAL).unwrap();
    assert_eq!(
        cfg.node.watch_history_entries_max,
        WATCH_HISTORY_ENTRIES_MAX_DEFAULT
    );
    assert_eq!(cfg.node.watch_history_bytes_max, 64 << 20);
    let text = MINIMAL.replacen(
        "[node]",
        "[node]\nwatch_history_entries_max = 4\nwatch_history_bytes_max = 65536",
        1,
    );
    let cfg = NodeConfig::parse(&text).unwrap();
    assert_eq!(
        (
            cfg.node.watch_history_entries_max,
            cfg.node.watch_history_bytes_max
        ),
        (4, 65536)
    );
    for (bad, key) in [
        (
            "watch_history_entries_max = 0",
            "node.watch_history_entries_max",
        ),
        (
            "watch_history_bytes_max = 1024",
            "node.watch_history_bytes_max",
        ),
        (
            "watch_history_bytes_max = 99999999999999",
            "node.watch_history_bytes_max",
        ),
    ] {
        let text = MINIMAL.replacen("[node]", &format!("[node]\n{bad}"), 1);
        let err = NodeConfig::parse(&text).unwrap_err().to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
}

#[test]
fn worker_threads_default_to_one_per_cpu_and_are_bounded() {
    assert_eq!(NodeConfig::parse(MINIMAL).unwrap().node.worker_threads, 0);
    let text = MINIMAL.replacen("[node]", "[node]\nworker_threads = 2", 1);
    assert_eq!(NodeConfig::parse(&text).unwrap().node.worker_threads, 2);
    let text = MINIMAL.replacen("[node]", "[node]\nworker_threads = 1025", 1);
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("node.worker_threads"), "{err}");
}

#[test]
fn log_format_and_readiness_bounds_have_defaults_and_are_checked() {
    let cfg = NodeConfig::parse(MINIMAL).unwrap();
    assert_eq!(cfg.node.log_format, LogFormat::Text);
    assert_eq!(
        cfg.node.readyz_lag_entries_max,
        READYZ_LAG_ENTRIES_MAX_DEFAULT
    );
    let text = MINIMAL.replacen("[node]", "[node]\nlog_format = \"json\"", 1);
    assert_eq!(
        NodeConfig::parse(&text).unwrap().node.log_format,
        LogFormat::Json
    );
    let text = MINIMAL.replacen("[node]", "[node]\nlog_format = \"xml\"", 1);
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("log_format") || err.contains("xml"), "{err}");
    let text = MINIMAL.replacen("[node]", "[node]\nreadyz_leader_contact_ms_max = 1", 1);
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("node.readyz_leader_contact_ms_max"), "{err}");
}

#[test]
fn election_timeout_must_cover_heartbeats() {
    let text =
        format!("{MINIMAL}\n[raft]\nheartbeat_interval_ms = 100\nelection_timeout_ms = 200\n");
    let err = NodeConfig::parse(&text).unwrap_err().to_string();
    assert!(err.contains("raft.election_timeout_ms"), "{err}");
}

#[test]
fn overrides_replace_file_values_and_are_validated_like_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let cfg = NodeConfig::load_with_overrides(
        &path,
        &[
            "raft.heartbeat_interval_ms=40".into(),
            "node.data_dir=/var/tmp/elsewhere".into(),
            "storage.fsync=relaxed".into(),
        ],
    )
    .unwrap();
    assert_eq!(cfg.raft.heartbeat_interval_ms, 40);
    assert_eq!(cfg.node.data_dir, PathBuf::from("/var/tmp/elsewhere"));
    assert_eq!(cfg.storage.fsync, FsyncPolicy::Relaxed);
    let err = NodeConfig::load_with_overrides(&path, &["raft.heartbeat_ms=5".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("heartbeat_ms"), "{err}");
    let err = NodeConfig::load_with_overrides(&path, &["snapshot.chunk_bytes=1".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("snapshot.chunk_bytes"), "{err}");
}

#[test]
fn config_round_trips_through_toml() {
    let cfg = NodeConfig::parse(MINIMAL).unwrap();
    let again = NodeConfig::parse(&cfg.to_toml()).unwrap();
    assert_eq!(again.address_book(), cfg.address_book());
}

#[test]
fn the_http_api_is_off_by_default_and_its_keys_are_checked_by_name() {
    let cfg = NodeConfig::parse(MINIMAL).unwrap();
    assert_eq!(cfg.http.listen, None);
    assert_eq!(cfg.http.token_key_file, PathBuf::from("token.key"));
    assert!(cfg.client.read_only_clients.is_empty());
    let clash = format!("{MINIMAL}\n[http]\nlisten = \"127.0.0.1:9000\"\n");
    let mut c = NodeConfig::parse(&clash).unwrap();
    c.node.metrics_listen = Some("127.0.0.1:9000".parse().unwrap());
    let err = c.validate().unwrap_err().to_string();
    assert!(
        err.contains("http.listen") && err.contains("metrics_listen"),
        "{err}"
    );
    // Port 0 on both: each binds its own.
    c.http.listen = Some("127.0.0.1:0".parse().unwrap());
    c.node.metrics_listen = c.http.listen;
    c.validate().unwrap();
    let both =
        format!("{MINIMAL}\n[client]\nadmin_clients = [\"ops\"]\nread_only_clients = [\"ops\"]\n");
    let err = NodeConfig::parse(&both).unwrap_err().to_string();
    assert!(err.contains("client.read_only_clients"), "{err}");
    let zero = format!("{MINIMAL}\n[http]\nconnections_max = 0\n");
    let err = NodeConfig::parse(&zero).unwrap_err().to_string();
    assert!(err.contains("http.connections_max"), "{err}");
}
