//! Tests of the configuration: the template, parse errors with key and line, `init`, and
//! `descriptor.json`.

use std::net::SocketAddr;
use std::path::Path;

use super::template::grouped;
use super::*;

fn listen() -> SocketAddr {
    "0.0.0.0:7001".parse().unwrap()
}

fn as_table(c: &Config) -> toml::Table {
    toml::Table::try_from(c).unwrap()
}

fn keys(prefix: &str, t: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in t {
        let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        match v {
            toml::Value::Table(sub) => keys(&path, sub, out),
            _ => out.push(path),
        }
    }
}

#[test]
fn the_template_parses_to_the_defaults() {
    let text = render_template(listen());
    let parsed = Config::parse(&text, Path::new("config.toml")).unwrap();
    let mut expected = Config::default();
    expected.transport.tcp.listen = listen();
    assert_eq!(as_table(&parsed), as_table(&expected));
}

#[test]
fn the_template_writes_out_every_setting() {
    let text = render_template(listen());
    let written: toml::Table = toml::from_str(&text).unwrap();
    let (mut want, mut have) = (Vec::new(), Vec::new());
    keys("", &as_table(&Config::default()), &mut want);
    // `[core.federation]` is left out of serialisation at its defaults (so scenario
    // hashes of the simulator do not change); the template writes it all out.
    let federation = toml::Table::try_from(nymstr_node_core::actors::federation::FederationConfig::default()).unwrap();
    keys("core.federation", &federation, &mut want);
    keys("", &written, &mut have);
    for k in &want {
        assert!(have.contains(k), "config.toml template lacks `{k}`");
    }
    // And every setting has a comment right above it or above its group.
    for line in text.lines().filter(|l| l.contains(" = ") && !l.starts_with('#')) {
        let key = line.split(" = ").next().unwrap();
        assert!(want.iter().any(|w| w.ends_with(key)), "unknown key `{key}` in the template");
    }
}

#[test]
fn an_empty_file_is_all_defaults() {
    let c = Config::parse("", Path::new("c")).unwrap();
    assert_eq!(as_table(&c), as_table(&Config::default()));
}

#[test]
fn type_errors_name_key_and_line() {
    let text = render_template(listen()).replace("queue_depth_max = 1_000", "queue_depth_max = \"lots\"");
    let line = text.lines().position(|l| l.starts_with("queue_depth_max")).unwrap() + 1;
    let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
    assert!(err.contains(&format!("line {line}")), "{err}");
    assert!(err.contains("`core.queue_depth_max`"), "{err}");
}

#[test]
fn unknown_keys_are_refused_with_their_line() {
    let text = render_template(listen()).replace("[core]\n", "[core]\nqueue_dept_max = 5\n");
    let line = text.lines().position(|l| l.starts_with("queue_dept_max")).unwrap() + 1;
    let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
    assert!(err.contains(&format!("line {line}")) && err.contains("`core.queue_dept_max`"), "{err}");
}

#[test]
fn range_errors_name_key_and_line() {
    let text = render_template(listen()).replace("sweep_every_us = 10_000_000", "sweep_every_us = 0");
    let line = text.lines().position(|l| l.starts_with("sweep_every_us")).unwrap() + 1;
    let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
    assert!(err.contains(&format!("line {line}")) && err.contains("core.sweep_every_us"), "{err}");
    let text = render_template(listen()).replace("max_connections = 1024", "max_connections = 0");
    let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
    assert!(err.contains("transport.tcp.max_connections") && err.contains("line"), "{err}");
    let err = Config::parse("[log]\nfilter = \"info,[[\"\n", Path::new("c.toml")).unwrap_err().to_string();
    assert!(err.contains("log.filter") && err.contains("line 2"), "{err}");
}

#[cfg(not(feature = "nym"))]
#[test]
fn nym_without_the_feature_says_how_to_build_it() {
    let text = render_template(listen()).replace("kind = \"tcp\"", "kind = \"nym\"");
    let err = Config::parse(&text, Path::new("c.toml")).unwrap_err().to_string();
    assert!(err.contains("transport.kind") && err.contains("--features nym"), "{err}");
    // A [transport.nym] table alone is kept, not refused, while kind = "tcp".
    let text = format!("{}\n[transport.nym]\ngateway = \"x\"\n", render_template(listen()));
    Config::parse(&text, Path::new("c.toml")).unwrap();
}

#[test]
fn init_writes_key_and_config_and_never_overwrites() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("node"));
    let report = init(&dir, listen()).unwrap();
    assert!(!report.kept_key);
    let key = NodeKey::load(&dir.key()).unwrap();
    assert_eq!(key.node_id(), report.node_id);
    assert_eq!(report.node_id.len(), 64);
    let config = Config::load_dir(&dir).unwrap();
    assert_eq!(config.transport.tcp.listen, listen());
    assert!(matches!(init(&dir, listen()), Err(InitError::Exists(_))));
    // A lost config.toml is rewritten, but the node keeps its identity.
    std::fs::remove_file(dir.config()).unwrap();
    let again = init(&dir, listen()).unwrap();
    assert!(again.kept_key);
    assert_eq!(again.node_id, report.node_id);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.key()).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "the key is private");
    }
}

#[test]
fn a_missing_directory_says_to_run_init() {
    let err = Config::load_dir(&DataDir::new("/nonexistent/nymstr")).unwrap_err().to_string();
    assert!(err.contains("nymstr-node init --dir /nonexistent/nymstr"), "{err}");
}

#[test]
fn descriptor_json_round_trips_and_verifies() {
    let key = NodeKey::generate().unwrap();
    let config = Config::default();
    let d = sign_descriptor(&key, &config, "127.0.0.1:7001", 42);
    assert_eq!(d.node_id.to_hex(), key.node_id());
    let json = DescriptorJson::from_descriptor(&d);
    assert_eq!(json.to_descriptor().unwrap(), d);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("descriptor.json");
    json.write(&path).unwrap();
    assert_eq!(DescriptorJson::read(&path).unwrap(), d);
    let forged = DescriptorJson { address: "127.0.0.1:9".into(), ..json };
    assert!(forged.to_descriptor().is_err());
}

#[test]
fn bootstrap_peers_are_written_into_the_template() {
    let text = render_template_with(listen(), &["127.0.0.1:7001".into(), "10.0.0.2:7000".into()]);
    let c = Config::parse(&text, Path::new("c.toml")).unwrap();
    assert_eq!(c.federation.bootstrap, vec!["127.0.0.1:7001".to_string(), "10.0.0.2:7000".to_string()]);
    assert!(c.federation.enabled);
    let text = text.replace("epoch_us = 30_000_000", "epoch_us = 5_000_000");
    assert_eq!(Config::parse(&text, Path::new("c.toml")).unwrap().core.federation.epoch_us, 5_000_000);
}

#[test]
fn grouping_digits() {
    assert_eq!(grouped(0), "0");
    assert_eq!(grouped(999), "999");
    assert_eq!(grouped(1000), "1_000");
    assert_eq!(grouped(86_400_000_000), "86_400_000_000");
}
