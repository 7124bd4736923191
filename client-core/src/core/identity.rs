//! This device's identity: an account key, an installation key and its Diffie-Hellman
//! key, bound by the installation certificate; and their persisted form.

use ed25519_dalek::SigningKey;
use nymstr_proto::identity;
use nymstr_proto::time::TimeUs;
use nymstr_proto::wire::{InstallationCert, InstallationId};
use rand_core::Rng;
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;

use super::events::RestoreError;

/// An account with one installation (this device).
pub struct Identity {
    pub account: SigningKey,
    pub installation: SigningKey,
    pub dh: StaticSecret,
    pub cert: InstallationCert,
    pub installation_id: InstallationId,
}

impl Identity {
    pub fn generate(rng: &mut impl Rng, now: TimeUs) -> Self {
        let account = identity::generate_signing_key(rng);
        let installation = identity::generate_signing_key(rng);
        let mut dh_bytes = [0u8; 32];
        rng.fill_bytes(&mut dh_bytes);
        let dh = StaticSecret::from(dh_bytes);
        let dh_pub = x25519_dalek::PublicKey::from(&dh).to_bytes();
        let inst_pub = installation.verifying_key().to_bytes();
        let cert = identity::issue_cert(&account, &inst_pub, &dh_pub, now);
        let installation_id = identity::installation_id(&inst_pub);
        Self { account, installation, dh, cert, installation_id }
    }

    /// The secret material, for a host to persist.
    pub fn to_state(&self) -> IdentityState {
        IdentityState {
            account_secret: self.account.to_bytes(),
            installation_secret: self.installation.to_bytes(),
            dh_secret: self.dh.to_bytes(),
            cert: self.cert.clone(),
        }
    }

    /// Rebuilds an identity, checking that the certificate belongs to the keys.
    pub fn from_state(state: &IdentityState) -> Result<Self, RestoreError> {
        let account = SigningKey::from_bytes(&state.account_secret);
        let installation = SigningKey::from_bytes(&state.installation_secret);
        let dh = StaticSecret::from(state.dh_secret);
        let cert = state.cert.clone();
        if cert.account_key != account.verifying_key().to_bytes()
            || cert.signing_key != installation.verifying_key().to_bytes()
            || cert.dh_key != x25519_dalek::PublicKey::from(&dh).to_bytes()
            || identity::verify_cert(&cert).is_err()
        {
            return Err(RestoreError::IdentityMismatch);
        }
        let installation_id = identity::installation_id(&cert.signing_key);
        Ok(Self { account, installation, dh, cert, installation_id })
    }
}

/// An identity's secret keys and certificate, as persisted.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityState {
    pub account_secret: [u8; 32],
    pub installation_secret: [u8; 32],
    pub dh_secret: [u8; 32],
    pub cert: InstallationCert,
}

impl std::fmt::Debug for IdentityState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentityState").field("cert", &self.cert).finish_non_exhaustive()
    }
}
