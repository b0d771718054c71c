//! The broker's configuration: layers, strictness, limits.

use super::*;

#[test]
fn layers_apply_in_order() {
    let dir = std::env::temp_dir().join(format!("mpreg-broker-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(
        &file,
        "name = \"from-file\"\nheartbeat_ms = 250\n[limits]\nmax_steps = 7\n",
    )
    .unwrap();
    let env = vec![
        ("MPREG_BROKER_HEARTBEAT_MS".to_string(), "500".to_string()),
        (
            "MPREG_BROKER_LIMITS__MAX_DEPTH".to_string(),
            "9".to_string(),
        ),
        ("MPREG_BROKER".to_string(), "tcp://ignored:1".to_string()),
    ];
    let flags = Flags {
        client_endpoint: Some("tcp://127.0.0.1:*".into()),
        ..Flags::default()
    };
    let c = BrokerConfig::load(file.to_str(), env, &flags).unwrap();
    assert_eq!(c.name, "from-file");
    assert_eq!(c.heartbeat_ms, 500, "env beats file");
    assert_eq!(c.limits.max_steps, 7);
    assert_eq!(c.limits.max_depth, 9);
    assert_eq!(
        c.client_endpoint, "tcp://127.0.0.1:*",
        "flags beat everything"
    );
    assert_eq!(c.worker_endpoint, "tcp://127.0.0.1:7401");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn protected_mode_needs_curve_or_insecure_beyond_loopback() {
    let public = Flags {
        client_endpoint: Some("tcp://0.0.0.0:7400".into()),
        ..Flags::default()
    };
    let err = BrokerConfig::load(None, Vec::new(), &public).unwrap_err();
    assert!(err.to_string().contains("protected mode"), "{err}");
    let insecure = Flags {
        insecure: true,
        ..public
    };
    let c = BrokerConfig::load(None, Vec::new(), &insecure).unwrap();
    assert!(c.exposed_without_curve());
    let local = BrokerConfig::load(None, Vec::new(), &Flags::default()).unwrap();
    assert!(!local.exposed_without_curve());
    // CURVE needs both files.
    let env = vec![(
        "MPREG_BROKER_SECURITY__KEY_FILE".to_string(),
        "/k".to_string(),
    )];
    let err = BrokerConfig::load(None, env, &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("access_file"), "{err}");
}

/// Mistakes used to be accepted silently; each is now refused at start, naming the key.
#[test]
fn unknown_keys_and_impossible_values_are_refused_by_name() {
    let load_env = |pairs: &[(&str, &str)]| {
        let env: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        BrokerConfig::load(None, env, &Flags::default())
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let cases: &[(&[(&str, &str)], &str)] = &[
        (
            &[("MPREG_BROKER_MAX_STEPZ", "3")],
            "unknown field `max_stepz`",
        ),
        (
            &[("MPREG_BROKER_LIMITS__MAX_STEPZ", "3")],
            "unknown field `max_stepz`",
        ),
        (
            &[("MPREG_BROKER_SOCKET__HWMM", "3")],
            "unknown field `hwmm`",
        ),
        (
            &[("MPREG_BROKER_LOG_LEVEL", "verbose")],
            "`log_level` = \"verbose\"",
        ),
        (
            &[("MPREG_BROKER_LIMITS__MAX_MESSAGE_BYTES", "1")],
            "`limits.max_message_bytes` = 1 is too small",
        ),
        (
            &[("MPREG_BROKER_LIMITS__MAX_STEPS", "0")],
            "`limits.max_steps` = 0 is too small",
        ),
        (
            &[("MPREG_BROKER_LIMITS__MAX_DEPTH", "2")],
            "`limits.max_depth` = 2 is too small",
        ),
        (
            &[("MPREG_BROKER_CLIENT_LIVENESS", "0")],
            "`client_liveness`",
        ),
        (
            &[("MPREG_BROKER_CLIENT_ENDPOINT", "nonsense")],
            "`client_endpoint`: invalid endpoint \"nonsense\"",
        ),
    ];
    for (env, expected) in cases {
        let err = load_env(env).expect_err(expected);
        assert!(err.contains(expected), "{env:?}: {err}");
    }
    // `nonsense` is an endpoint problem, not a protected-mode one.
    let err = load_env(&[("MPREG_BROKER_CLIENT_ENDPOINT", "nonsense")]).unwrap_err();
    assert!(!err.contains("protected mode"), "{err}");
    // Short log levels are fine, and the broker's own binary variable is not a key.
    load_env(&[
        ("MPREG_BROKER_LOG_LEVEL", "warn"),
        ("MPREG_BROKER", "tcp://x:1"),
    ])
    .unwrap();

    let dir = std::env::temp_dir().join(format!("mpreg-unknown-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("broker.toml");
    std::fs::write(&file, "[limitz]\nmax_steps = 3\n").unwrap();
    let err = BrokerConfig::load(file.to_str(), Vec::new(), &Flags::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `limitz`"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn defaults_are_valid_and_bad_values_are_refused() {
    let c = BrokerConfig::load(None, Vec::new(), &Flags::default()).unwrap();
    assert!(c.name.starts_with("broker-"));
    assert_eq!(c.limits(), Limits::default());
    let env = vec![("MPREG_BROKER_HEARTBEAT_MS".to_string(), "0".to_string())];
    let err = BrokerConfig::load(None, env, &Flags::default()).unwrap_err();
    assert!(err.to_string().contains("heartbeat_ms"), "{err}");
    assert!(BrokerConfig::load(
        Some("/nonexistent/broker.toml"),
        Vec::new(),
        &Flags::default()
    )
    .is_err());
}

#[test]
fn cluster_timings_must_make_sense_together() {
    let load = |pairs: &[(&str, &str)]| {
        let env: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (format!("MPREG_BROKER_CLUSTER__{k}"), v.to_string()))
            .collect();
        BrokerConfig::load(None, env, &Flags::default())
    };
    let c = load(&[("ACK_TIMEOUT_MS", "750")]).unwrap();
    assert_eq!(c.cluster.ack_timeout_ms, 750);
    assert_eq!(
        BrokerConfig::load(None, Vec::new(), &Flags::default())
            .unwrap()
            .cluster
            .ack_timeout_ms,
        5000,
        "the documented default"
    );
    for (pairs, named) in [
        (
            &[("PROBE_INTERVAL_MS", "0")][..],
            "cluster.probe_interval_ms",
        ),
        (
            &[("SUSPICION_TIMEOUT_MS", "0")][..],
            "cluster.suspicion_timeout_ms",
        ),
        (
            &[("DIGEST_INTERVAL_MS", "0")][..],
            "cluster.digest_interval_ms",
        ),
        (&[("ACK_TIMEOUT_MS", "0")][..], "cluster.ack_timeout_ms"),
        (
            &[("PROBE_INTERVAL_MS", "300"), ("PROBE_TIMEOUT_MS", "300")][..],
            "cluster.probe_timeout_ms",
        ),
        (
            &[
                ("PEER_ENDPOINT", "tcp://127.0.0.1:0"),
                ("GOSSIP_ENDPOINT", "tcp://127.0.0.1:0"),
                ("NAME", ""),
            ][..],
            "cluster.name",
        ),
    ] {
        let err = load(pairs).unwrap_err().to_string();
        assert!(err.contains(named), "{pairs:?}: {err}");
    }
    load(&[("PROBE_INTERVAL_MS", "300"), ("PROBE_TIMEOUT_MS", "299")]).unwrap();
}
