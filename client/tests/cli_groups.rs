//! Group chats with the `nymstr` binary against the real `nymstr-node` binary, over
//! loopback TCP: every user is a separate home and every step a separate process, as a
//! person or a script would run them. Commands that change a group wait until the change
//! is in the group's log; `inbox` waits until every group caught up with its log; so the
//! assertions need no sleeps. No test asserts a duration.
// The test is a host, not a core: threads read child processes' output.
#![allow(clippy::disallowed_methods)]

use std::net::TcpListener;

use nymstr_client_core::seal::GroupInvite;
use nymstr_proto::codec;
use serde_json::Value;

mod cli_common;
use cli_common::*;

impl User {
    /// Runs a command that must fail with `code`; returns its stderr.
    fn fails(&self, args: &[&str], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{} {args:?}: expected exit {code}\nstdout: {}\nstderr: {stderr}",
            self.name,
            String::from_utf8_lossy(&out.stdout)
        );
        stderr
    }

    /// `inbox` as JSON lines.
    fn inbox(&self) -> Vec<Value> {
        self.json(&["inbox"])
    }

    /// `group members GROUP`: the usernames, sorted.
    fn members(&self, group: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .json(&["group", "members", group])
            .iter()
            .filter(|v| v["type"] == "member")
            .map(|v| v["username"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// The names of the groups `group list` shows as joined.
    fn group_names(&self) -> Vec<String> {
        self.json(&["group", "list"])
            .iter()
            .filter(|v| v["type"] == "group" && v["state"] == "member")
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    }
}

/// `(from, text)` of the group messages among JSON lines.
fn group_messages(values: &[Value]) -> Vec<(String, String)> {
    values
        .iter()
        .filter(|v| v["type"] == "group_message")
        .map(|v| (v["from"].as_str().unwrap().to_string(), v["text"].as_str().unwrap().to_string()))
        .collect()
}

fn notices<'a>(values: &'a [Value], kind: &str) -> Vec<&'a Value> {
    values.iter().filter(|v| v["type"] == "group_notice" && v["kind"] == kind).collect()
}

fn pair(from: &str, text: &str) -> (String, String) {
    (from.to_string(), text.to_string())
}

#[test]
fn an_invite_only_group_invite_join_talk_rename_remove() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);
    let carol = User::join("carol", &node);

    let created = alice.json(&["group", "create", "friends", "--description", "old friends"]);
    assert_eq!(created[0]["type"], "group_created");
    assert_eq!(created[0]["open"], false);
    let id = created[0]["group"].as_str().unwrap().to_string();

    // Invitations go as end-to-end encrypted DMs; inbox shows them with the command.
    for user in ["bob", "carol"] {
        let invited = alice.json(&["group", "invite", "friends", user]);
        assert_eq!(invited[0]["type"], "group_invited");
        assert_eq!(invited[0]["group"], id.as_str());
    }
    let text = bob.ok(&["inbox"]);
    assert!(text.contains("alice invited you to the group \"friends\""), "{text}");
    assert!(text.contains(&format!("nymstr group join {id}")), "{text}");
    let invites: Vec<Value> = carol.inbox().into_iter().filter(|v| v["type"] == "group_invite").collect();
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0]["from"], "alice");
    assert_eq!(invites[0]["name"], "friends");
    assert_eq!(invites[0]["description"], "old friends");
    // Pending invitations are listed until accepted.
    let listed = carol.json(&["group", "list"]);
    assert!(listed.iter().any(|v| v["type"] == "group_invite" && v["group"] == id.as_str()), "{listed:?}");

    // bob accepts by id, carol by the group's name.
    let joined = bob.json(&["group", "join", &id]);
    assert_eq!(joined[0]["type"], "group_joined");
    assert_eq!(joined[0]["name"], "friends");
    carol.ok(&["group", "join", "friends"]);
    assert!(!carol.json(&["group", "list"]).iter().any(|v| v["type"] == "group_invite"), "the invitation is used");
    for u in [&alice, &bob, &carol] {
        assert_eq!(u.members("friends"), ["alice", "bob", "carol"], "{}", u.name);
    }

    // Everyone talks; everyone reads the others.
    let sent = alice.json(&["group", "send", "friends", "hello", "from", "alice"]);
    assert_eq!(sent[0]["type"], "group_sent");
    bob.ok(&["group", "send", "friends", "hi, bob here"]);
    carol.ok(&["group", "send", &id[..8], "carol too"]);
    let a = alice.inbox();
    assert_eq!(group_messages(&a), vec![pair("bob", "hi, bob here"), pair("carol", "carol too")]);
    assert!(a.iter().filter(|v| v["type"] == "group_message").all(|v| v["group_name"] == "friends"));
    let mut joins: Vec<&str> = notices(&a, "joined").iter().map(|v| v["who"].as_str().unwrap()).collect();
    joins.sort();
    assert_eq!(joins, ["bob", "carol"], "alice is told who joined: {a:?}");
    assert_eq!(group_messages(&bob.inbox()), vec![pair("alice", "hello from alice"), pair("carol", "carol too")]);
    let text = carol.ok(&["inbox"]);
    assert!(text.contains("[friends] alice: hello from alice"), "{text}");
    // carol never looked bob up: his name is his claim, marked, with his key.
    assert!(text.contains("[friends] bob (name not verified, key "), "{text}");
    assert!(text.contains("): hi, bob here"), "{text}");
    assert!(!text.contains("carol too"), "own messages are not news: {text}");

    // alice renames it: everyone is told and lists the new name.
    let renamed = alice.json(&["group", "rename", "friends", "best friends"]);
    assert_eq!(renamed[0]["name"], "best friends");
    for u in [&bob, &carol] {
        let inbox = u.inbox();
        assert_eq!(notices(&inbox, "renamed").len(), 1, "{}: {inbox:?}", u.name);
    }
    for u in [&alice, &bob, &carol] {
        assert_eq!(u.group_names(), ["best friends"], "{}", u.name);
    }

    // alice removes carol; carol no longer reads what follows.
    let removed = alice.json(&["group", "remove", "best friends", "carol"]);
    assert_eq!(removed[0]["type"], "group_removed");
    assert_eq!(alice.members("best friends"), ["alice", "bob"]);
    assert_eq!(bob.members("best friends"), ["alice", "bob"]);
    alice.ok(&["group", "send", "best friends", "carol is gone"]);
    bob.ok(&["group", "send", "best friends", "just us now"]);
    let c = carol.inbox();
    assert!(group_messages(&c).is_empty(), "carol reads nothing after her removal: {c:?}");
    assert_eq!(notices(&c, "removed").len(), 1, "carol is told: {c:?}");
    assert!(carol.group_names().is_empty());
    assert_eq!(group_messages(&bob.inbox()), vec![pair("alice", "carol is gone")]);
    let a = alice.inbox();
    assert_eq!(group_messages(&a), vec![pair("bob", "just us now")]);
    // Sending to a group she left is a usage error for carol.
    carol.fails(&["group", "send", "best friends", "let me in"], 2);
    // The group history keeps everything alice saw, in order.
    let history = alice.json(&["group", "history", "best friends"]);
    let texts: Vec<String> = group_messages(&history).into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, ["hello from alice", "hi, bob here", "carol too", "carol is gone", "just us now"]);
}

#[test]
fn an_open_public_group_is_listed_and_joined_by_id() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);
    let carol = User::join("carol", &node);
    let open = alice.json(&["group", "create", "rustaceans", "--public", "--open", "--description", "all welcome"]);
    let open_id = open[0]["group"].as_str().unwrap().to_string();
    let closed = alice.json(&["group", "create", "inner circle", "--public"]);
    let closed_id = closed[0]["group"].as_str().unwrap().to_string();
    alice.ok(&["group", "create", "hidden"]);

    let dir = bob.json(&["directory"]);
    let mut listed: Vec<(String, bool)> =
        dir.iter().map(|v| (v["name"].as_str().unwrap().to_string(), v["open"].as_bool().unwrap())).collect();
    listed.sort();
    assert_eq!(listed, vec![("inner circle".to_string(), false), ("rustaceans".to_string(), true)]);
    let advert = dir.iter().find(|v| v["group"] == open_id.as_str()).unwrap();
    assert_eq!(advert["description"], "all welcome");
    assert_eq!(advert["node"], node.addr.as_str());
    let text = bob.ok(&["directory", "--node", &node.addr]);
    assert!(text.contains(&format!("nymstr group join {open_id} --node {}", node.addr)), "{text}");

    // bob joins the open one by id; the directory told him its name.
    let joined = bob.json(&["group", "join", &open_id, "--node", &node.addr]);
    assert_eq!(joined[0]["name"], "rustaceans");
    bob.ok(&["group", "send", "rustaceans", "hello all"]);
    assert_eq!(group_messages(&alice.inbox()), vec![pair("bob", "hello all")]);
    alice.ok(&["group", "send", "rustaceans", "welcome bob"]);
    assert_eq!(group_messages(&bob.inbox()), vec![pair("alice", "welcome bob")]);
    assert_eq!(bob.members("rustaceans"), ["alice", "bob"]);

    // The invite-only one refuses a join by id.
    let err = carol.fails(&["group", "join", &closed_id], 1);
    assert!(err.contains("invite-only"), "{err}");
    assert!(carol.group_names().is_empty());
    // bob may leave; alice (the admin) is running no command, so her next one commits it.
    let out = bob.run(&["--timeout", "3", "group", "leave", "rustaceans"]);
    assert_eq!(out.status.code(), Some(6), "{}", String::from_utf8_lossy(&out.stderr));
    let a = alice.inbox();
    assert_eq!(notices(&a, "left").len(), 1, "{a:?}");
    assert_eq!(alice.members("rustaceans"), ["alice"]);
    let b = bob.inbox();
    assert_eq!(notices(&b, "removed").len(), 1, "{b:?}");
    assert!(bob.group_names().is_empty());
}

#[test]
fn bad_group_input_is_a_clean_error() {
    let node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);
    let created = alice.json(&["group", "create", "club", "--open"]);
    let id = created[0]["group"].as_str().unwrap().to_string();
    bob.ok(&["group", "join", &id]);
    // The group is not in the directory and its admin has not run since: bob knows it
    // by its id until her client tells the group its name.
    let club = &id[..8];

    // A group id the node does not host.
    let err = bob.fails(&["group", "join", "00112233445566778899aabbccddeeff"], 1);
    assert!(err.contains("no group with this id"), "{err}");
    // Malformed invitations and ids.
    let err = bob.fails(&["group", "join", "not-an-invitation"], 2);
    assert!(err.contains("is neither a pending invitation"), "{err}");
    // The database keeps group secrets: it is the owner's alone.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(bob.home.path().join("db")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
    bob.fails(&["group", "join", &id[..31]], 2);
    let out = bob.run(&["--json", "group", "join", "zz"]);
    assert_eq!(out.status.code(), Some(2));
    let err: Value = serde_json::from_slice(&out.stderr).expect("--json errors are JSON");
    assert_eq!(err["error"], "usage");
    // Joining twice.
    let err = bob.fails(&["group", "join", &id], 2);
    assert!(err.contains("already a member"), "{err}");
    // A member who is not an admin may not remove, rename or invite.
    let err = bob.fails(&["group", "remove", club, "alice"], 1);
    assert!(err.contains("only an admin"), "{err}");
    bob.fails(&["group", "rename", club, "mine now"], 1);
    bob.fails(&["group", "invite", club, "alice"], 1);
    // Unknown groups, unknown members, unknown users.
    bob.fails(&["group", "send", "no such group", "hi"], 2);
    let err = alice.fails(&["group", "remove", "club", "carol"], 2);
    assert!(err.contains("carol is not a member"), "{err}");
    let err = alice.fails(&["group", "invite", "club", "nobody"], 1);
    assert!(err.contains("no such user"), "{err}");
    // The sole admin may not leave while others remain.
    let err = alice.fails(&["group", "leave", "club"], 1);
    assert!(err.contains("last admin"), "{err}");
    // Invitation codes: a malformed one, one with a forged signature, a used one.
    let carol = User::join("carol", &node);
    alice.ok(&["group", "create", "secret"]);
    let code = alice.json(&["group", "invite", "secret", "--code"])[0]["code"].as_str().unwrap().to_string();
    let err = bob.fails(&["group", "join", "nymstr-invite:zz"], 2);
    assert!(err.contains("malformed invitation code"), "{err}");
    let err = bob.fails(&["group", "join", &code[..code.len() - 10]], 2);
    assert!(err.contains("malformed invitation code"), "{err}");
    let mut forged: GroupInvite =
        codec::decode(&hex::decode(code.strip_prefix("nymstr-invite:").unwrap()).unwrap()).unwrap();
    forged.token.sig.0[0] ^= 1;
    let forged = format!("nymstr-invite:{}", hex::encode(codec::encode(&forged)));
    let err = bob.fails(&["group", "join", &forged], 2);
    assert!(err.contains("not valid"), "{err}");
    let joined = bob.json(&["group", "join", &code]);
    assert_eq!(joined[0]["name"], "secret");
    let err = carol.fails(&["group", "join", &code], 1);
    assert!(err.contains("already used"), "{err}");
    assert!(carol.group_names().is_empty());
    // An unreachable group node.
    let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let err = alice.fails(&["group", "create", "elsewhere", "--node", &dead], 1);
    assert!(err.contains("unreachable"), "{err}");
    let mut names = alice.group_names();
    names.sort();
    assert_eq!(names, ["club", "secret"]);
    // Nothing broke: they still talk.
    alice.ok(&["group", "send", "club", "still fine"]);
    let b = bob.inbox();
    assert_eq!(group_messages(&b), vec![pair("alice", "still fine")]);
    // By now alice's client told the group its name.
    assert!(b.iter().all(|v| v["type"] != "group_message" || v["group_name"] == "club"), "{b:?}");
    let mut names = bob.group_names();
    names.sort();
    assert_eq!(names, ["club", "secret"]);
}

#[test]
fn listen_shows_group_messages_sends_typed_ones_and_resubscribes_after_a_node_restart() {
    let mut node = Node::start();
    let alice = User::join("alice", &node);
    let bob = User::join("bob", &node);
    let created = alice.json(&["group", "create", "chat", "--public", "--open"]);
    let id = created[0]["group"].as_str().unwrap().to_string();
    bob.ok(&["group", "join", &id]);

    let mut listen = bob.listen(&[]);
    alice.ok(&["group", "send", "chat", "one"]);
    let got = listen.expect("group_message", |v| v["text"] == "one");
    assert_eq!(got["from"], "alice");
    assert_eq!(got["group_name"], "chat");
    listen.type_line("/g chat two");
    listen.expect("group_sent", |v| v["group_name"] == "chat");
    assert_eq!(group_messages(&alice.inbox()), vec![pair("bob", "two")]);

    // The node restarts: the listener connects again and subscribes again.
    node.kill();
    node.run();
    listen.expect("reconnected", |v| v["groups"] == true);
    alice.ok(&["group", "send", "chat", "three"]);
    listen.expect("group_message", |v| v["text"] == "three");
    // An invitation arrives while listening, with the command that accepts it.
    alice.ok(&["group", "create", "private"]);
    alice.ok(&["group", "invite", "private", "bob"]);
    let invite = listen.expect("group_invite", |v| v["name"] == "private");
    assert!(invite["accept"].as_str().unwrap().starts_with("nymstr group join "));
    // While listen holds the home, group commands report it busy.
    bob.fails(&["group", "send", "chat", "x"], 5);
    drop(listen);
    // What listen showed is read; the history has it.
    assert!(group_messages(&bob.inbox()).is_empty());
    let history = bob.json(&["group", "history", "chat"]);
    let texts: Vec<String> = group_messages(&history).into_iter().map(|(_, t)| t).collect();
    assert_eq!(texts, ["one", "two", "three"]);
}

/// The id of the node running in `node`'s directory (`nymstr-node info --json`).
fn node_id(node: &Node) -> String {
    let out = std::process::Command::new(node_bin())
        .args(["info", "--json", "--dir"])
        .arg(node.dir.path())
        .output()
        .expect("nymstr-node info runs");
    assert!(out.status.success(), "nymstr-node info failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("info --json is JSON");
    v["node_id"].as_str().expect("a node id").to_string()
}

/// Issue 10 item 3: two users called "alice", one on node A and one on node B, in one
/// group hosted on A. Member credentials carry a self-asserted name, so the CLI names a
/// sender by the pin that vouches for its account key (`alice`, `alice@<node id>`) and
/// marks the rest; `group remove alice` is refused as ambiguous, listing both, and
/// `group remove alice@<node B>` removes the other alice only.
#[test]
fn namesakes_on_two_nodes_are_told_apart_and_removed_only_by_qualified_name() {
    let node_a = Node::start();
    let node_b = Node::start();
    let alice = User::join("alice", &node_a);
    let bob = User::join("bob", &node_a);
    let other = User { home: tempfile::tempdir().unwrap(), name: "alice" };
    other.ok(&["init"]);
    other.ok(&["register", "alice", "--node", &node_b.addr]);

    let created = alice.json(&["group", "create", "club", "--open"]);
    let id = created[0]["group"].as_str().unwrap().to_string();
    // bob by invitation (a DM: bob pins alice's account key when he opens it).
    alice.ok(&["group", "invite", "club", "bob"]);
    bob.ok(&["inbox"]);
    bob.ok(&["group", "join", &id]);
    // The other alice joins the open group by id at node A.
    other.ok(&["group", "join", &id, "--node", &node_a.addr]);

    alice.ok(&["group", "send", "club", "hello from the real alice"]);
    other.ok(&["group", "send", &id, "hello from alice too"]);

    // bob tells them apart: the pinned alice is `alice`, verified; the other is marked.
    let b = bob.inbox();
    let lines: Vec<&Value> = b.iter().filter(|v| v["type"] == "group_message").collect();
    assert_eq!(lines.len(), 2, "{b:?}");
    let real = lines.iter().find(|v| v["text"] == "hello from the real alice").unwrap();
    let fake = lines.iter().find(|v| v["text"] == "hello from alice too").unwrap();
    assert_eq!((real["from"].as_str(), real["verified"].as_bool()), (Some("alice"), Some(true)), "{real}");
    assert_eq!((fake["from"].as_str(), fake["verified"].as_bool()), (Some("alice"), Some(false)), "{fake}");
    assert_ne!(real["account_key"], fake["account_key"]);
    let history = bob.ok(&["group", "history", "club"]);
    assert!(history.contains("] alice: hello from the real alice"), "{history}");
    assert!(history.contains("] alice (name not verified, key "), "{history}");
    assert!(!history.contains("] alice: hello from alice too"), "{history}");

    // alice (the admin) cannot remove "alice": two members claim it.
    let err = alice.fails(&["group", "remove", "club", "alice"], 2);
    assert!(err.contains("several members of \"club\" claim to be alice"), "{err}");
    assert_eq!(err.matches("alice (name not verified, key ").count(), 1, "the other alice is listed: {err}");

    // She pins the other alice under her qualified name (the key `group members` shows)...
    let members = alice.json(&["group", "members", "club"]);
    let theirs = members.iter().find(|v| v["username"] == "alice" && v["you"] == false).expect("the other alice");
    let key = theirs["account_key"].as_str().unwrap().to_string();
    let qualified = format!("alice@{}", node_id(&node_b));
    alice.ok(&["trust", &qualified, "--key", &key]);
    let members = alice.json(&["group", "members", "club"]);
    let theirs = members.iter().find(|v| v["username"] == "alice" && v["you"] == false).unwrap();
    assert_eq!((theirs["name"].as_str(), theirs["verified"].as_bool()), (Some(qualified.as_str()), Some(true)));
    // ...reads her next line under it...
    other.ok(&["group", "send", &id, "still here"]);
    let a = alice.inbox();
    let line = a.iter().find(|v| v["type"] == "group_message" && v["text"] == "still here").expect("the line");
    assert_eq!(line["from"].as_str(), Some(qualified.as_str()), "{line}");
    // ...and removes her, and only her, by it.
    let removed = alice.json(&["group", "remove", "club", &qualified]);
    assert_eq!(removed[0]["type"], "group_removed");
    let members = alice.json(&["group", "members", "club"]);
    let names: Vec<(&str, bool)> =
        members.iter().map(|v| (v["username"].as_str().unwrap(), v["you"].as_bool().unwrap())).collect();
    assert_eq!(names.len(), 2, "{members:?}");
    assert!(names.contains(&("alice", true)) && names.contains(&("bob", false)), "{members:?}");
}
