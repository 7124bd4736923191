//! `nymstr witness`: the nodes whose cosignatures count for this client's transparency
//! checks (`specs/trust.md` §5). Witnesses are only what the user adds here: nodes the
//! home node lists or gossip brings are never witnesses.

use std::path::Path;
use std::time::Duration;

use nymstr_proto::federation::{NodeDescriptor, NodeId, Roles, descriptor};
use nymstr_proto::wire::Sig;
use serde_json::{Value, json};

use crate::cli::common::open_home;
use crate::cli::error::CliError;
use crate::cli::output::{Printer, hex};
use crate::cli::session::Session;

/// A node's `descriptor.json` (what `nymstr-node init` writes in its directory), verified.
fn read_descriptor(path: &Path) -> Result<NodeDescriptor, CliError> {
    let bad = |why: String| CliError::Usage(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let field = |name: &str| v[name].as_str().map(str::to_string).ok_or_else(|| bad(format!("no {name}")));
    let number = |name: &str| v[name].as_u64().ok_or_else(|| bad(format!("no {name}")));
    let mut key = [0u8; 32];
    hex::decode_to_slice(field("key")?, &mut key).map_err(|e| bad(format!("key: {e}")))?;
    let mut sig = [0u8; 64];
    hex::decode_to_slice(field("sig")?, &mut sig).map_err(|e| bad(format!("sig: {e}")))?;
    let node_id = NodeId::from_hex(&field("node_id")?).ok_or_else(|| bad("node_id: not 64 hex digits".into()))?;
    let roles: Vec<&str> =
        v["roles"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    let d = NodeDescriptor {
        node_id,
        key,
        address: field("address")?.into_bytes(),
        roles: Roles { discovery: roles.contains(&"discovery"), group: roles.contains(&"group") },
        policy: field("policy")?,
        epoch_us: number("epoch_us")?,
        issued_at_us: number("issued_at_us")?,
        sig: Sig(sig),
    };
    descriptor::verify(&d).map_err(|e| bad(format!("does not verify: {e}")))?;
    Ok(d)
}

/// `nymstr witness add FILE`: trusts the node of a descriptor file as a witness.
pub fn witness_add(dir: &Path, out: &Printer, file: &Path) -> Result<(), CliError> {
    let d = read_descriptor(file)?;
    let home = open_home(dir)?;
    let mut session = Session::open(home, Printer::new(out.json), String::new(), Duration::from_secs(1))?;
    session.core.add_witness(&d).map_err(|e| CliError::Usage(format!("{}: {e}", file.display())))?;
    session.persist()?;
    let address = String::from_utf8_lossy(&d.address).into_owned();
    out.data(
        || format!("node {} at {address} is now a witness", d.node_id.to_hex()),
        || json!({ "type": "witness", "node_id": d.node_id.to_hex(), "key": hex(&d.key), "address": address }),
    );
    Ok(())
}

/// `nymstr witness list`: the witnesses, by node id.
pub fn witness_list(dir: &Path, out: &Printer) -> Result<(), CliError> {
    let home = open_home(dir)?;
    let session = Session::open(home, Printer::new(out.json), String::new(), Duration::from_secs(1))?;
    let v = session.core.transparency();
    if v.witnesses().is_empty() {
        out.human("no witnesses (add one with `nymstr witness add DESCRIPTOR.json`)");
    }
    for id in v.witnesses() {
        let key = v.node_key(id).map(|k| hex(k)).unwrap_or_default();
        out.data(
            || format!("{} {key}", id.to_hex()),
            || json!({ "type": "witness", "node_id": id.to_hex(), "key": key }),
        );
    }
    Ok(())
}
