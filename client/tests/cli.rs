//! The `nymstr` binary against the real `nymstr-node` binary, over loopback TCP.
//!
//! Each test starts its own node (`nymstr-node init` + `run` in a temporary directory)
//! and its own client homes, and drives the CLI as a user or a script would: commands,
//! exit codes, `--json` output, and `listen` fed through standard input. Waits poll
//! with generous timeouts; no test asserts a duration.
// The test is a host, not a core: threads read child processes' output.
#![allow(clippy::disallowed_methods)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};

use nymstr_proto::codec;
use nymstr_proto::framing::Decoder;
use nymstr_proto::wire::Body;
use serde_json::Value;

mod cli_common;
use cli_common::*;

fn messages(values: &[Value]) -> Vec<(String, String)> {
    values
        .iter()
        .filter(|v| v["type"] == "message")
        .map(|v| (v["from"].as_str().unwrap().to_string(), v["text"].as_str().unwrap().to_string()))
        .collect()
}

#[test]
fn alice_sends_and_bob_reads_his_inbox() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);

    let sent = alice.json(&["send", "bob", "hello", "bob"]);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0]["type"], "sent");
    assert_eq!(sent[0]["via"], "relay");

    let inbox = bob.json(&["inbox"]);
    assert_eq!(messages(&inbox), vec![("alice".to_string(), "hello bob".to_string())]);
    assert_eq!(inbox[0]["via"], "relay");
    // Read once: the next inbox is empty, the history keeps it.
    assert!(messages(&bob.json(&["inbox"])).is_empty());
    let history = bob.json(&["history", "alice"]);
    assert_eq!(messages(&history), vec![("alice".to_string(), "hello bob".to_string())]);

    // The reply goes the other way; alice's history holds both, with statuses.
    bob.ok(&["send", "alice", "hi", "alice"]);
    let text = alice.ok(&["inbox"]);
    assert!(text.contains("bob: hi alice"), "{text}");
    let history = alice.json(&["history"]);
    let statuses: Vec<_> =
        history.iter().map(|v| (v["direction"].as_str().unwrap(), v["status"].as_str().unwrap())).collect();
    assert_eq!(statuses, vec![("out", "sent"), ("in", "received")]);

    // Both pinned each other's key on first use.
    let contacts = alice.json(&["contacts"]);
    assert_eq!(contacts.len(), 1);
    assert_eq!(contacts[0]["username"], "bob");
    let bob_key = bob.json(&["status"])[0]["account_key"].clone();
    assert_eq!(contacts[0]["account_key"], bob_key);
    let looked_up = alice.json(&["lookup", "bob"]);
    assert_eq!(looked_up[0]["pinned"], "match");
}

#[test]
fn an_interrupted_send_is_sent_on_the_next_run() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);
    alice.ok(&["lookup", "bob"]);

    // A "node" that takes the connection and never answers: alice's send is handed over
    // and then killed before any acknowledgement.
    let black_hole = TcpListener::bind("127.0.0.1:0").unwrap();
    let hole = black_hole.local_addr().unwrap().to_string();
    let mut send = alice.cmd(&["send", "bob", "survives", "a", "crash", "--node", &hole]).spawn().unwrap();
    let (mut conn, _) = black_hole.accept().unwrap();
    conn.set_read_timeout(Some(WAIT)).unwrap();
    wait_for_send_dm(&mut conn);
    send.kill().unwrap();
    send.wait().unwrap();
    let status = alice.json(&["status"]);
    assert_eq!(status[0]["pending"], 1, "the unacknowledged message is stored");

    // The next command that reaches the real node sends it again.
    alice.ok(&["inbox"]);
    assert_eq!(alice.json(&["status"])[0]["pending"], 0);
    assert_eq!(messages(&bob.json(&["inbox"])), vec![("alice".to_string(), "survives a crash".to_string())]);
    let history = alice.json(&["history"]);
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "sent");

    // A send that times out says so with its own exit code, and is kept too.
    let out = alice.run(&["--timeout", "2", "send", "bob", "later", "--node", &hole]);
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("will be sent again"));
    alice.ok(&["send", "bob", "now"]);
    let texts: Vec<String> = messages(&bob.json(&["inbox"])).into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, vec!["later".to_string(), "now".to_string()]);
}

/// Reads frames from a client until it has sent a `SendDm` (by then it stored it).
fn wait_for_send_dm(conn: &mut TcpStream) {
    let mut decoder = Decoder::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf).expect("the client writes");
        assert!(n > 0, "the client closed before sending the message");
        decoder.push(&buf[..n]);
        while let Some(frame) = decoder.next_frame().unwrap() {
            if let Ok(env) = codec::decode_frame(&frame)
                && matches!(env.body, Body::SendDm(_))
            {
                return;
            }
        }
    }
}

#[test]
fn an_unreachable_node_is_exit_1_with_a_clear_message() {
    let mut node = Node::start();
    let alice = User::join("alice", &node);
    User::join("bob", &node);
    let addr = node.addr.clone();
    node.kill();

    let out = alice.run(&["send", "bob", "into", "the", "void"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("node {addr} unreachable: connection refused")), "{stderr}");
    assert_eq!(alice.json(&["status"])[0]["pending"], 0, "nothing was handed over, nothing is queued");

    let out = alice.run(&["--json", "inbox"]);
    assert_eq!(out.status.code(), Some(1));
    let err: Value = serde_json::from_slice(&out.stderr).expect("--json errors are JSON");
    assert_eq!(err["error"], "node_unreachable");
    assert_eq!(err["exit_code"], 1);
}

#[test]
fn exit_codes_tell_what_is_wrong() {
    let node = Node::start();
    let fresh = User::new("fresh");
    // Not initialised.
    assert_eq!(fresh.run(&["send", "bob", "x"]).status.code(), Some(3));
    assert_eq!(fresh.run(&["contacts"]).status.code(), Some(3));
    fresh.ok(&["init"]);
    // Initialised twice: refused, keys untouched.
    let out = fresh.run(&["init"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
    // Not registered.
    let out = fresh.run(&["send", "bob", "x"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nymstr register"));
    // Usage: bad name, missing text, unknown flag.
    assert_eq!(fresh.run(&["register", "no way!", "--node", &node.addr]).status.code(), Some(2));
    assert_eq!(fresh.run(&["send", "bob"]).status.code(), Some(2));
    assert_eq!(fresh.run(&["send", "bob", "x", "--colour"]).status.code(), Some(2));
    assert_eq!(fresh.run(&["register", "fresh", "--node", "localhost"]).status.code(), Some(2));
    // A taken name is refused by the node.
    User::join("carol", &node);
    let out = fresh.run(&["register", "carol", "--node", &node.addr]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("taken"), "{}", String::from_utf8_lossy(&out.stderr));
    fresh.ok(&["register", "dave", "--node", &node.addr]);
    // A user who does not exist.
    let out = fresh.run(&["send", "nobody", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));
    // The home is busy while `listen` runs (`send` hands its message over instead).
    let listener = fresh.listen(&[]);
    let out = fresh.run(&["inbox"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another nymstr process"));
    drop(listener);
    // --help documents the exit codes.
    let help = fresh.ok(&["--help"]);
    assert!(help.contains("Exit codes:") && help.contains("4    a contact's account key changed"), "{help}");
}

#[test]
fn listen_shows_messages_as_they_arrive_and_sends_typed_ones() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);
    alice.ok(&["send", "bob", "queued", "before"]);
    let mut listen = bob.listen(&[]);
    listen.expect("message", |v| v["text"] == "queued before");
    alice.ok(&["send", "bob", "while", "listening"]);
    listen.expect("message", |v| v["text"] == "while listening" && v["from"] == "alice");
    listen.type_line("/msg alice typed reply");
    listen.expect("sent", |v| v["to"] == "alice" && v["via"] == "relay");
    assert_eq!(messages(&alice.json(&["inbox"])), vec![("bob".to_string(), "typed reply".to_string())]);
    // `send` from another terminal while `listen` holds the home: handed over to it.
    let sent = bob.json(&["send", "alice", "from", "another", "terminal"]);
    assert_eq!(sent[0]["type"], "sent");
    assert_eq!(sent[0]["via"], "relay");
    listen.expect("sent", |v| v["to"] == "alice" && v["msg_id"] == sent[0]["msg_id"]);
    let out = bob.run(&["send", "nobody", "x"]);
    assert_eq!(out.status.code(), Some(1), "the listener's refusal comes back with its exit code");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user"));
    assert_eq!(messages(&alice.json(&["inbox"])), vec![("bob".to_string(), "from another terminal".to_string())]);
    // Both are in bob's history, written by the listening process.
    drop(listen);
    let history = bob.json(&["history", "alice"]);
    let texts: Vec<_> = history.iter().map(|v| v["text"].as_str().unwrap()).collect();
    assert_eq!(texts, vec!["queued before", "while listening", "typed reply", "from another terminal"]);
}

#[test]
fn direct_messages_bypass_the_node_and_fall_back_to_it() {
    let mut node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);

    let carol = User::join("carol", &node);

    // Handshake through the node: each approves the other (`--offer`), and both are ready.
    let mut bob_listen = bob.listen(&["--direct", "127.0.0.1:0", "--offer", "alice"]);
    let mut alice_listen = alice.listen(&["--direct", "127.0.0.1:0", "--offer", "bob"]);
    alice_listen.expect("direct_ready", |v| v["peer"] == "bob");
    bob_listen.expect("direct_ready", |v| v["peer"] == "alice");

    // carol, whom bob never approved, offers too: bob shows the offer and answers nothing,
    // so carol's messages to bob keep going through the node.
    let mut carol_listen = carol.listen(&["--direct", "127.0.0.1:0", "--offer", "bob"]);
    bob_listen.expect("direct_offered", |v| v["peer"] == "carol");
    carol_listen.type_line("/msg bob hello stranger");
    let sent = carol_listen.expect("sent", |v| v["to"] == "bob");
    assert_eq!(sent["via"], "relay");
    bob_listen.expect("message", |v| v["text"] == "hello stranger" && v["via"] == "relay");
    drop(carol_listen);

    // With the node gone, a message still arrives: it went directly.
    node.kill();
    alice_listen.type_line("/msg bob no node needed");
    let got = bob_listen.expect("message", |v| v["text"] == "no node needed");
    assert_eq!(got["via"], "direct");
    let sent = alice_listen.expect("sent", |v| v["to"] == "bob");
    assert_eq!(sent["via"], "direct");
    assert_eq!(sent["status"], "delivered");

    // The node comes back (same address); bob disappears without a goodbye. alice's
    // direct attempt fails and the message goes through the relay instead.
    node.run();
    drop(bob_listen);
    alice_listen.expect("reconnected", |_| true);
    alice_listen.type_line("/msg bob are you there");
    alice_listen.expect("direct_failed", |v| v["to"] == "bob");
    let sent = alice_listen.expect("sent", |v| v["to"] == "bob" && v["via"] == "relay");
    assert_eq!(sent["status"], "sent");
    let inbox = bob.json(&["inbox"]);
    let got: Vec<_> = inbox.iter().filter(|v| v["type"] == "message").collect();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["text"], "are you there");
    assert_eq!(got[0]["via"], "relay");

    // The direct message is in bob's history once, as direct.
    let history = bob.json(&["history", "alice"]);
    let direct: Vec<_> = history.iter().filter(|v| v["text"] == "no node needed").collect();
    assert_eq!(direct.len(), 1);
    assert_eq!(direct[0]["via"], "direct");
}

#[test]
fn a_changed_key_is_exit_4_until_trusted() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);
    assert_eq!(alice.json(&["lookup", "bob"])[0]["pinned"], "new");
    // Another node answers for "bob" with another account key (a different person, or
    // an impersonation): alice refuses it.
    let other = Node::start();
    let mallory = User::new("mallory");
    mallory.ok(&["init"]);
    mallory.ok(&["register", "bob", "--node", &other.addr]);
    let out = alice.run(&["lookup", "bob", "--node", &other.addr]);
    assert_eq!(out.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("account key of bob changed") && stderr.contains("nymstr trust bob"), "{stderr}");
    // alice verified the new key out of band and trusts it.
    let new_key = mallory.json(&["status"])[0]["account_key"].as_str().unwrap().to_string();
    alice.ok(&["trust", "bob", "--key", &new_key]);
    assert_eq!(alice.json(&["lookup", "bob", "--node", &other.addr])[0]["pinned"], "match");
    let contacts = alice.json(&["contacts"]);
    assert_eq!(contacts[0]["account_key"], new_key.as_str());
    drop(bob);
}

/// `nymstr witness add` takes a node's `descriptor.json` (verified) and the witness is
/// kept in the home; a tampered descriptor is refused. Nothing else adds witnesses: a
/// lookup at the node (which lists its descriptors) leaves the list as the user made it.
#[test]
fn witnesses_are_only_what_the_user_adds() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    assert!(alice.json(&["witness", "list"]).is_empty());
    alice.ok(&["lookup", "alice"]);
    assert!(alice.json(&["witness", "list"]).is_empty(), "meeting the node adds no witness");
    let file = node.dir.path().join("descriptor.json");
    let text = std::fs::read_to_string(&file).expect("the running node wrote its descriptor");
    let descriptor: Value = serde_json::from_str(&text).unwrap();
    let added = alice.json(&["witness", "add", file.to_str().unwrap()]);
    assert_eq!(added[0]["node_id"], descriptor["node_id"]);
    let listed = alice.json(&["witness", "list"]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["node_id"], descriptor["node_id"]);
    // The same descriptor moved to another address no longer verifies.
    let tampered = node.dir.path().join("tampered.json");
    std::fs::write(&tampered, text.replace(&node.addr, "127.0.0.1:1")).unwrap();
    let out = alice.run(&["witness", "add", tampered.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not verify"));
    assert_eq!(alice.json(&["witness", "list"]).len(), 1);
}
