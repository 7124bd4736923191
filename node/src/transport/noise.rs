//! The authenticated channel of node-to-node TCP connections (`specs/tcp.md` §6): a
//! `Noise_XX_25519_ChaChaPoly_BLAKE2s` handshake (the `snow` crate) whose X25519 static keys
//! are bound to the nodes' ed25519 node keys by a signature carried in the handshake, then
//! every wire frame sealed in transport messages.
//!
//! Each process draws a fresh X25519 static key from the operating system at start and
//! signs it with its node key: `proof = node key (32) || sig(node key,
//! signing_bytes(LABEL_NOISE_STATIC, static public key))` (96 bytes). The responder sends
//! its proof in handshake message 2, the initiator in message 3; each side checks the other's
//! proof against the static key Noise authenticated, so the peer's node id is
//! `descriptor::node_id(node key)` of a key that holds both the signature and the X25519
//! secret. The prologue is the preface body (`PREFACE_MAGIC || address`), so the address the
//! dialer claims is part of the transcript both sides authenticate.
//!
//! A wire frame (up to `FRAME_BYTES_MAX` = 65,536 bytes) may exceed one Noise message
//! (65,535 bytes with a 16-byte tag), so it is sent as one or more records, each a
//! length-prefixed Noise message whose plaintext is `more (1 byte: 1 = more pieces follow, 0 =
//! last) || piece (≤ 65,518 bytes)`.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use snow::{Builder, HandshakeState, StatelessTransportState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use nymstr_proto::federation::{NodeId, descriptor};
use nymstr_proto::framing::{self, Decoder};
use nymstr_proto::identity;
use nymstr_proto::limits::FRAME_BYTES_MAX;
use nymstr_proto::wire::{PublicKey, Sig};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// Label of the bytes a node key signs to vouch for a Noise static key.
pub const LABEL_NOISE_STATIC: &str = "nymstr/v1/node-noise-static";
/// A proof: node key (32) || signature (64).
pub const PROOF_BYTES: usize = 96;
const MSG_MAX: usize = 65_535;
const TAG_BYTES: usize = 16;
/// Largest piece of a frame in one record (the rest of a Noise message is the flag and tag).
pub const PIECE_MAX: usize = MSG_MAX - TAG_BYTES - 1;

fn params() -> snow::params::NoiseParams {
    NOISE_PARAMS.parse().expect("a valid Noise protocol name")
}

/// `signing_bytes(LABEL_NOISE_STATIC, static_public)`: what a node key signs.
pub fn static_key_bytes(static_public: &[u8; 32]) -> Vec<u8> {
    identity::signing_bytes(LABEL_NOISE_STATIC, static_public)
}

/// This process's Noise static key and the node key's proof for it.
pub struct NoiseIdentity {
    private: Vec<u8>,
    proof: Vec<u8>,
}

impl NoiseIdentity {
    /// Draws a fresh static key (OS entropy, through snow's default resolver) and signs it.
    pub fn new(node_key: &SigningKey) -> Result<Self, snow::Error> {
        let keypair = Builder::new(params()).generate_keypair()?;
        let public: [u8; 32] = keypair.public.as_slice().try_into().expect("X25519 public keys are 32 bytes");
        let sig = identity::sign(node_key, &static_key_bytes(&public));
        let mut proof = node_key.verifying_key().to_bytes().to_vec();
        proof.extend_from_slice(&sig.0);
        Ok(Self { private: keypair.private, proof })
    }
}

/// The node id a proof vouches for, if it signs `remote_static`.
pub fn check_proof(proof: &[u8], remote_static: Option<&[u8]>) -> Result<NodeId, String> {
    let remote: [u8; 32] =
        remote_static.and_then(|s| s.try_into().ok()).ok_or("no remote static key after the handshake")?;
    if proof.len() != PROOF_BYTES {
        return Err(format!("a node-key proof of {} bytes (expected {PROOF_BYTES})", proof.len()));
    }
    let key: PublicKey = proof[..32].try_into().expect("32 bytes");
    let sig = Sig(proof[32..].try_into().expect("64 bytes"));
    identity::verify(&key, &static_key_bytes(&remote), &sig)
        .map_err(|_| "the node key's signature over the Noise static key does not verify".to_string())?;
    Ok(descriptor::node_id(&key))
}

/// The sending half of an established session.
pub struct Sealer {
    session: Arc<StatelessTransportState>,
    nonce: u64,
}

/// The receiving half of an established session.
pub struct Opener {
    session: Arc<StatelessTransportState>,
    nonce: u64,
    partial: Vec<u8>,
}

/// An established session: both halves and the peer's authenticated node id.
pub struct Session {
    pub sealer: Sealer,
    pub opener: Opener,
    pub peer: NodeId,
}

impl Session {
    fn new(state: HandshakeState, peer: NodeId) -> Result<Session, String> {
        let session = Arc::new(state.into_stateless_transport_mode().map_err(|e| e.to_string())?);
        Ok(Session {
            sealer: Sealer { session: session.clone(), nonce: 0 },
            opener: Opener { session, nonce: 0, partial: Vec::new() },
            peer,
        })
    }
}

impl Sealer {
    /// One wire frame as length-prefixed records, ready to write.
    pub fn seal(&mut self, frame: &[u8]) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(frame.len() + 32);
        let mut pieces = frame.chunks(PIECE_MAX).peekable();
        let mut buf = vec![0u8; MSG_MAX];
        while let Some(piece) = pieces.next() {
            let mut plain = Vec::with_capacity(piece.len() + 1);
            plain.push(u8::from(pieces.peek().is_some()));
            plain.extend_from_slice(piece);
            let n = self.session.write_message(self.nonce, &plain, &mut buf).map_err(|e| e.to_string())?;
            self.nonce += 1;
            out.extend_from_slice(&framing::encode(&buf[..n]).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

impl Opener {
    /// Opens one record; returns a whole frame once its last piece arrived. An error (a
    /// record that does not authenticate, a frame over the limit) ends the connection.
    pub fn open(&mut self, record: &[u8]) -> Result<Option<Vec<u8>>, String> {
        let mut buf = vec![0u8; record.len()];
        let n = self.session.read_message(self.nonce, record, &mut buf).map_err(|e| e.to_string())?;
        self.nonce += 1;
        let (&more, piece) = buf[..n].split_first().ok_or("an empty record")?;
        if more > 1 || self.partial.len() + piece.len() > FRAME_BYTES_MAX {
            return Err("a malformed or oversized sealed frame".into());
        }
        self.partial.extend_from_slice(piece);
        if more == 1 {
            return Ok(None);
        }
        let frame = std::mem::take(&mut self.partial);
        if frame.is_empty() {
            return Err("an empty sealed frame".into());
        }
        Ok(Some(frame))
    }
}

async fn read_frame(stream: &mut TcpStream, decoder: &mut Decoder) -> Result<Vec<u8>, String> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(frame) = decoder.next_frame().map_err(|e| e.to_string())? {
            return Ok(frame);
        }
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        decoder.push(&buf[..n]);
    }
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> Result<(), String> {
    let framed = framing::encode(frame).map_err(|e| e.to_string())?;
    stream.write_all(&framed).await.map_err(|e| e.to_string())
}

/// A handshake state over this process's static key with the preface as prologue.
fn handshake(me: &NoiseIdentity, prologue: &[u8], initiator: bool) -> Result<snow::HandshakeState, String> {
    let b = Builder::new(params()).local_private_key(&me.private).and_then(|b| b.prologue(prologue));
    if initiator { b.and_then(|b| b.build_initiator()) } else { b.and_then(|b| b.build_responder()) }
        .map_err(|e| e.to_string())
}

/// The dialer's side: writes the framed `preface` (whose body is the prologue), then the
/// handshake. Bytes read past the handshake stay in `decoder`.
pub async fn initiate(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    me: &NoiseIdentity,
    preface_body: &[u8],
) -> Result<Session, String> {
    let mut hs = handshake(me, preface_body, true)?;
    let mut buf = vec![0u8; MSG_MAX];
    write_frame(stream, preface_body).await?;
    let n = hs.write_message(&[], &mut buf).map_err(|e| e.to_string())?;
    write_frame(stream, &buf[..n]).await?;
    let msg2 = read_frame(stream, decoder).await?;
    let mut payload = vec![0u8; MSG_MAX];
    let len = hs.read_message(&msg2, &mut payload).map_err(|e| format!("handshake message 2: {e}"))?;
    let peer = check_proof(&payload[..len], hs.get_remote_static())?;
    let n = hs.write_message(&me.proof, &mut buf).map_err(|e| e.to_string())?;
    write_frame(stream, &buf[..n]).await?;
    Session::new(hs, peer)
}

/// The accepting side, after the preface (`preface_body`, the prologue) was read.
pub async fn respond(
    stream: &mut TcpStream,
    decoder: &mut Decoder,
    me: &NoiseIdentity,
    preface_body: &[u8],
) -> Result<Session, String> {
    let mut hs = handshake(me, preface_body, false)?;
    let mut buf = vec![0u8; MSG_MAX];
    let mut payload = vec![0u8; MSG_MAX];
    let msg1 = read_frame(stream, decoder).await?;
    hs.read_message(&msg1, &mut payload).map_err(|e| format!("handshake message 1: {e}"))?;
    let n = hs.write_message(&me.proof, &mut buf).map_err(|e| e.to_string())?;
    write_frame(stream, &buf[..n]).await?;
    let msg3 = read_frame(stream, decoder).await?;
    let len = hs.read_message(&msg3, &mut payload).map_err(|e| format!("handshake message 3: {e}"))?;
    let peer = check_proof(&payload[..len], hs.get_remote_static())?;
    Session::new(hs, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Session, Session, NodeId, NodeId) {
        let (ka, kb) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let (a, b) = (NoiseIdentity::new(&ka).unwrap(), NoiseIdentity::new(&kb).unwrap());
        let mut i = Builder::new(params()).local_private_key(&a.private).unwrap().build_initiator().unwrap();
        let mut r = Builder::new(params()).local_private_key(&b.private).unwrap().build_responder().unwrap();
        let (mut buf, mut p) = (vec![0u8; MSG_MAX], vec![0u8; MSG_MAX]);
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut p).unwrap();
        let n = r.write_message(&b.proof, &mut buf).unwrap();
        let len = i.read_message(&buf[..n], &mut p).unwrap();
        let id_b = check_proof(&p[..len], i.get_remote_static()).unwrap();
        let n = i.write_message(&a.proof, &mut buf).unwrap();
        let len = r.read_message(&buf[..n], &mut p).unwrap();
        let id_a = check_proof(&p[..len], r.get_remote_static()).unwrap();
        (Session::new(i, id_b).unwrap(), Session::new(r, id_a).unwrap(), id_a, id_b)
    }

    #[test]
    fn each_side_learns_the_node_id_of_the_others_key() {
        let (ia, ib) = (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]));
        let (a, b, id_a, id_b) = pair();
        assert_eq!(id_a, descriptor::node_id(&ia.verifying_key().to_bytes()));
        assert_eq!(id_b, descriptor::node_id(&ib.verifying_key().to_bytes()));
        assert_eq!(a.peer, id_b);
        assert_eq!(b.peer, id_a);
    }

    #[test]
    fn a_proof_for_another_static_key_is_refused() {
        let k = SigningKey::from_bytes(&[3; 32]);
        let me = NoiseIdentity::new(&k).unwrap();
        assert!(check_proof(&me.proof, Some(&[9u8; 32])).is_err());
        assert!(check_proof(&me.proof[..95], Some(&[9u8; 32])).is_err());
    }

    #[test]
    fn frames_of_every_size_cross_and_a_changed_byte_is_refused() {
        let (mut a, mut b, _, _) = pair();
        for len in [1, 100, PIECE_MAX, PIECE_MAX + 1, FRAME_BYTES_MAX] {
            let frame: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = a.sealer.seal(&frame).unwrap();
            let mut d = Decoder::new();
            d.push(&sealed);
            let mut got = None;
            while let Some(record) = d.next_frame().unwrap() {
                assert!(got.is_none());
                got = b.opener.open(&record).unwrap();
            }
            assert_eq!(got, Some(frame), "{len}");
        }
        let mut sealed = a.sealer.seal(b"hello").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(b.opener.open(&sealed[4..]).is_err());
    }
}
