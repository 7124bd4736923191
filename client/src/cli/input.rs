//! What the user or a peer hands in, checked before it is used: node addresses, message
//! text (from the arguments or standard input), group invitations.

use std::io::Read;

use nymstr_proto::identity;

use crate::cli::error::CliError;
use nymstr_client_core::seal::GroupInvite;

/// `HOST:PORT`, checked before anything is tried.
pub(super) fn check_node_addr(addr: &str) -> Result<(), CliError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => Err(CliError::Usage(format!("--node {addr}: expected HOST:PORT, for example 127.0.0.1:7000"))),
    }
}

pub(super) fn message_text(text: Vec<String>, max: usize) -> Result<Vec<u8>, CliError> {
    let body = if text.len() == 1 && text[0] == "-" {
        let mut buf = String::new();
        std::io::stdin()
            .read_to_string(&mut buf)
            .map_err(|e| CliError::Usage(format!("cannot read the message from standard input: {e}")))?;
        buf.trim_end_matches(['\n', '\r']).to_string()
    } else {
        text.join(" ")
    };
    if body.is_empty() {
        return Err(CliError::Usage("the message is empty".into()));
    }
    if body.len() > max {
        return Err(CliError::Usage(format!("the message has {} bytes; the limit is {max}", body.len())));
    }
    Ok(body.into_bytes())
}

/// The token is signed by the admin key it names, and the node address is `HOST:PORT`.
pub(super) fn invite_is_valid(invite: &GroupInvite) -> bool {
    let t = &invite.token;
    identity::verify_invite_token(t).is_ok()
        && std::str::from_utf8(&invite.group_node).is_ok_and(|a| check_node_addr(a).is_ok())
}
