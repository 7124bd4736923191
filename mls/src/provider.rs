//! An `OpenMlsProvider` whose every random draw comes from a seeded ChaCha stream.
//!
//! `openmls_rust_crypto::OpenMlsRustCrypto` seeds its RNG from OS entropy, and hpke-rs
//! seeds its own PRNG inside every `Hpke::new`, so neither replays. Here:
//! * `OpenMlsRand` and signature key generation draw from the provider's ChaCha20;
//! * HPKE runs over [`SeededHpke`], an `HpkeCrypto` that delegates every primitive to
//!   hpke-rs-rust-crypto; only its PRNG (`HpkeCrypto::prng`) differs: it starts from a
//!   seed the provider hands over right before each HPKE operation. For a DH KEM, hpke-rs
//!   0.7's sender setup (`seal`, `setup_sender`) takes the first 32 bytes of that PRNG as
//!   the `ikm` of RFC 9180 `DeriveKeyPair` for the ephemeral key; it does not call
//!   `SeededHpke::kem_key_gen` there (that serves only `Hpke::generate_key_pair`, which
//!   openmls does not use). `hpke_seal` derives the seed from a provider secret and the
//!   call's inputs (SIV-style, [`LABEL_HPKE_SEAL_SEED`]: the HPKE config's KEM/KDF/AEAD
//!   ids, the recipient key, info, aad and plaintext), not from the stream: openmls
//!   encrypts an update path on rayon's thread pool, so the order of seal calls differs
//!   between runs and a stream draw per call would not replay. The inputs include the
//!   recipient key, so every ciphertext of a path gets its own ephemeral key; the secret
//!   keeps the ephemeral keys unpredictable to anyone else;
//! * everything deterministic (hash, HKDF, AEAD, signatures, HPKE open) is delegated to
//!   `RustCrypto` unchanged.
//!
//! Only the nymstr ciphersuites are supported (X25519 KEM): `supports` says so, and an
//! MLS peer proposing another suite is refused by openmls before any HPKE call.
//!
//! Hosts seed the provider from their environment: the simulator from the entity's
//! stream, the real client from OS entropy read in its runtime.

use std::cell::RefCell;
use std::sync::Mutex;

use hpke_rs::Hpke;
use hpke_rs_crypto::types::{AeadAlgorithm, KdfAlgorithm, KemAlgorithm};
use hpke_rs_crypto::{HpkeCrypto, HpkeTestRng, error::Error as HpkeError};
use hpke_rs_rust_crypto::HpkeRustCrypto;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeAeadType, HpkeCiphertext, HpkeConfig,
    HpkeKdfType, HpkeKemType, HpkeKeyPair, KemOutput, SignatureScheme,
};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng, TryCryptoRng, TryRng};
use tls_codec::SecretVLBytes;

/// The ciphersuite every nymstr group uses unless configured otherwise.
pub const DEFAULT_CIPHERSUITE: Ciphersuite = Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519;

/// The ciphersuites this provider implements (X25519 KEM, Ed25519 signatures).
pub const SUPPORTED_CIPHERSUITES: [Ciphersuite; 2] = [
    Ciphersuite::MLS_128_DHKEMX25519_AES128GCM_SHA256_Ed25519,
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519,
];

thread_local! {
    /// The seed the next `SeededHpke::prng()` starts from, set by the provider right
    /// before it builds an `Hpke` (hpke-rs creates its PRNG inside `Hpke::new` from a
    /// static function, so a per-call thread-local is the only way in).
    static NEXT_HPKE_SEED: RefCell<Option<[u8; 32]>> = const { RefCell::new(None) };
}

/// hpke-rs' PRNG for [`SeededHpke`]: ChaCha20 from the seed the provider handed over.
pub struct SeededHpkePrng(ChaCha20Rng);

impl TryRng for SeededHpkePrng {
    type Error = std::convert::Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Self::Error> {
        Ok(self.0.next_u32())
    }
    fn try_next_u64(&mut self) -> Result<u64, Self::Error> {
        Ok(self.0.next_u64())
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dst);
        Ok(())
    }
}

impl TryCryptoRng for SeededHpkePrng {}

impl HpkeTestRng for SeededHpkePrng {
    type Error = std::convert::Infallible;
    fn try_fill_test_bytes(&mut self, dest: &mut [u8]) -> Result<(), Self::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
    fn seed(&mut self, seed: &[u8]) {
        let mut s = [0u8; 32];
        let n = seed.len().min(32);
        s[..n].copy_from_slice(&seed[..n]);
        self.0 = ChaCha20Rng::from_seed(s);
    }
}

impl zeroize::Zeroize for SeededHpkePrng {
    fn zeroize(&mut self) {
        // ChaCha20Rng does not expose its state; replace it with a zero-seeded one.
        self.0 = ChaCha20Rng::from_seed([0; 32]);
    }
}

/// hpke-rs crypto backend: hpke-rs-rust-crypto with seeded key generation.
#[derive(Debug)]
pub struct SeededHpke;

impl HpkeCrypto for SeededHpke {
    type HpkePrng = SeededHpkePrng;

    fn name() -> String {
        "nymstr-seeded-rust-crypto".into()
    }
    fn supports_kdf(alg: KdfAlgorithm) -> Result<(), HpkeError> {
        HpkeRustCrypto::supports_kdf(alg)
    }
    fn supports_kem(alg: KemAlgorithm) -> Result<(), HpkeError> {
        match alg {
            KemAlgorithm::DhKem25519 => Ok(()),
            _ => Err(HpkeError::UnknownKemAlgorithm),
        }
    }
    fn supports_aead(alg: AeadAlgorithm) -> Result<(), HpkeError> {
        HpkeRustCrypto::supports_aead(alg)
    }
    fn prng() -> Self::HpkePrng {
        // A missing seed is a programming error in this module (every HPKE entry point
        // sets one); fall back to a fixed stream rather than OS entropy so that such a
        // bug shows up as a failed replay test, never as hidden nondeterminism.
        let seed = NEXT_HPKE_SEED.with(|s| s.borrow_mut().take()).unwrap_or([0x5e; 32]);
        SeededHpkePrng(ChaCha20Rng::from_seed(seed))
    }
    fn kdf_extract(alg: KdfAlgorithm, salt: &[u8], ikm: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::kdf_extract(alg, salt, ikm)
    }
    fn kdf_expand(alg: KdfAlgorithm, prk: &[u8], info: &[u8], output_size: usize) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::kdf_expand(alg, prk, info, output_size)
    }
    fn dh(alg: KemAlgorithm, pk: &[u8], sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::dh(alg, pk, sk)
    }
    fn secret_to_public(alg: KemAlgorithm, sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::secret_to_public(alg, sk)
    }
    /// Random key generation (`Hpke::generate_key_pair` only: hpke-rs 0.7 derives the
    /// ephemeral key of a seal or sender setup with `DeriveKeyPair` from the PRNG's first
    /// 32 bytes instead, and openmls derives its HPKE keys with `derive_hpke_keypair`).
    fn kem_key_gen(alg: KemAlgorithm, prng: &mut Self::HpkePrng) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        match alg {
            KemAlgorithm::DhKem25519 => {
                let mut sk = [0u8; 32];
                prng.0.fill_bytes(&mut sk);
                let secret = x25519_dalek::StaticSecret::from(sk);
                let pk = x25519_dalek::PublicKey::from(&secret).as_bytes().to_vec();
                Ok((pk, secret.to_bytes().to_vec()))
            }
            _ => Err(HpkeError::UnknownKemAlgorithm),
        }
    }
    fn kem_key_gen_derand(alg: KemAlgorithm, seed: &[u8]) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        HpkeRustCrypto::kem_key_gen_derand(alg, seed)
    }
    fn kem_encaps(
        _alg: KemAlgorithm,
        _pk_r: &[u8],
        _prng: &mut Self::HpkePrng,
    ) -> Result<(Vec<u8>, Vec<u8>), HpkeError> {
        // Only post-quantum KEMs encapsulate through this entry; for DH KEMs hpke-rs
        // derives the ephemeral key itself (`DeriveKeyPair` over 32 PRNG bytes).
        Err(HpkeError::UnsupportedKemOperation)
    }
    fn kem_decaps(alg: KemAlgorithm, ct: &[u8], sk_r: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::kem_decaps(alg, ct, sk_r)
    }
    fn dh_validate_sk(alg: KemAlgorithm, sk: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::dh_validate_sk(alg, sk)
    }
    fn aead_seal(alg: AeadAlgorithm, key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::aead_seal(alg, key, nonce, aad, msg)
    }
    fn aead_open(alg: AeadAlgorithm, key: &[u8], nonce: &[u8], aad: &[u8], msg: &[u8]) -> Result<Vec<u8>, HpkeError> {
        HpkeRustCrypto::aead_open(alg, key, nonce, aad, msg)
    }
}

/// Domain-separation label of the seal seed: `blake3::keyed_hash(seal_key, ..)` over
/// `LABEL || len(suite) || suite || len(pk_r) || pk_r || len(info) || info || len(aad) || aad
/// || len(ptxt) || ptxt`, where `suite` is the HPKE config's KEM, KDF and AEAD ids (u16
/// big-endian each, 6 bytes) and the lengths are u64 big-endian.
pub const LABEL_HPKE_SEAL_SEED: &str = "nymstr/v1/mls/hpke-seal-seed";

/// The crypto and randomness half of [`NymstrProvider`].
pub struct SeededCrypto {
    rng: Mutex<ChaCha20Rng>,
    /// Secret for input-derived HPKE seal randomness (drawn first from the stream).
    seal_key: [u8; 32],
    inner: RustCrypto,
}

impl std::fmt::Debug for SeededCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeededCrypto").finish_non_exhaustive()
    }
}

impl SeededCrypto {
    pub fn new(seed: [u8; 32]) -> Self {
        let mut rng = ChaCha20Rng::from_seed(seed);
        let mut seal_key = [0u8; 32];
        rng.fill_bytes(&mut seal_key);
        Self { rng: Mutex::new(rng), seal_key, inner: RustCrypto::default() }
    }

    /// The seed of a seal's HPKE generator (see [`LABEL_HPKE_SEAL_SEED`]): the config's
    /// ids are bound first, then `parts` (`pk_r`, `info`, `aad`, `ptxt`).
    fn seal_seed(&self, config: &HpkeConfig, parts: &[&[u8]]) -> [u8; 32] {
        let mut suite = [0u8; 6];
        suite[..2].copy_from_slice(&(config.0 as u16).to_be_bytes());
        suite[2..4].copy_from_slice(&(config.1 as u16).to_be_bytes());
        suite[4..].copy_from_slice(&(config.2 as u16).to_be_bytes());
        let mut h = blake3::Hasher::new_keyed(&self.seal_key);
        h.update(LABEL_HPKE_SEAL_SEED.as_bytes());
        for p in std::iter::once(&suite[..]).chain(parts.iter().copied()) {
            h.update(&(p.len() as u64).to_be_bytes());
            h.update(p);
        }
        *h.finalize().as_bytes()
    }

    /// An `Hpke` whose PRNG starts from a seed derived from this call's config and inputs.
    fn hpke_for_seal(&self, config: HpkeConfig, parts: &[&[u8]]) -> Hpke<SeededHpke> {
        let seed = self.seal_seed(&config, parts);
        NEXT_HPKE_SEED.with(|s| *s.borrow_mut() = Some(seed));
        Hpke::<SeededHpke>::new(hpke_rs::Mode::Base, kem_mode(config.0), kdf_mode(config.1), aead_mode(config.2))
    }

    fn fill(&self, out: &mut [u8]) {
        // The lock is never held across a call that could panic.
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.fill_bytes(out);
    }

    /// Builds an `Hpke` whose PRNG starts from the next 32 bytes of this stream.
    fn hpke(&self, config: HpkeConfig) -> Hpke<SeededHpke> {
        let mut seed = [0u8; 32];
        self.fill(&mut seed);
        NEXT_HPKE_SEED.with(|s| *s.borrow_mut() = Some(seed));
        Hpke::<SeededHpke>::new(hpke_rs::Mode::Base, kem_mode(config.0), kdf_mode(config.1), aead_mode(config.2))
    }
}

fn kem_mode(kem: HpkeKemType) -> KemAlgorithm {
    match kem {
        HpkeKemType::DhKemP256 => KemAlgorithm::DhKemP256,
        HpkeKemType::DhKemP384 => KemAlgorithm::DhKemP384,
        HpkeKemType::DhKemP521 => KemAlgorithm::DhKemP521,
        HpkeKemType::DhKem25519 => KemAlgorithm::DhKem25519,
        HpkeKemType::DhKem448 => KemAlgorithm::DhKem448,
    }
}

fn kdf_mode(kdf: HpkeKdfType) -> KdfAlgorithm {
    match kdf {
        HpkeKdfType::HkdfSha256 => KdfAlgorithm::HkdfSha256,
        HpkeKdfType::HkdfSha384 => KdfAlgorithm::HkdfSha384,
        HpkeKdfType::HkdfSha512 => KdfAlgorithm::HkdfSha512,
    }
}

fn aead_mode(aead: HpkeAeadType) -> AeadAlgorithm {
    match aead {
        HpkeAeadType::AesGcm128 => AeadAlgorithm::Aes128Gcm,
        HpkeAeadType::AesGcm256 => AeadAlgorithm::Aes256Gcm,
        HpkeAeadType::ChaCha20Poly1305 => AeadAlgorithm::ChaCha20Poly1305,
        HpkeAeadType::Export => AeadAlgorithm::HpkeExport,
    }
}

fn ensure_x25519(config: &HpkeConfig) -> Result<(), CryptoError> {
    match config.0 {
        HpkeKemType::DhKem25519 => Ok(()),
        _ => Err(CryptoError::UnsupportedCiphersuite),
    }
}

impl OpenMlsCrypto for SeededCrypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        if SUPPORTED_CIPHERSUITES.contains(&ciphersuite) { Ok(()) } else { Err(CryptoError::UnsupportedCiphersuite) }
    }
    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        SUPPORTED_CIPHERSUITES.to_vec()
    }
    fn hkdf_extract(&self, hash_type: HashType, salt: &[u8], ikm: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_extract(hash_type, salt, ikm)
    }
    fn hmac(&self, hash_type: HashType, key: &[u8], message: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hmac(hash_type, key, message)
    }
    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.inner.hkdf_expand(hash_type, prk, info, okm_len)
    }
    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.hash(hash_type, data)
    }
    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_encrypt(alg, key, data, nonce, aad)
    }
    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }
    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        match alg {
            SignatureScheme::ED25519 => {
                let mut seed = [0u8; 32];
                self.fill(&mut seed);
                let sk = ed25519_dalek::SigningKey::from_bytes(&seed);
                Ok((sk.to_bytes().to_vec(), sk.verifying_key().to_bytes().to_vec()))
            }
            _ => Err(CryptoError::UnsupportedSignatureScheme),
        }
    }
    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.inner.verify_signature(alg, data, pk, signature)
    }
    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.inner.sign(alg, data, key)
    }
    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        ensure_x25519(&config)?;
        let (kem_output, ciphertext) = self
            .hpke_for_seal(config, &[pk_r, info, aad, ptxt])
            .seal(&pk_r.into(), info, aad, ptxt, None, None, None)
            .map_err(|e| match e {
                hpke_rs::HpkeError::InvalidInput => CryptoError::InvalidLength,
                _ => CryptoError::CryptoLibraryError,
            })?;
        Ok(HpkeCiphertext { kem_output: kem_output.into(), ciphertext: ciphertext.into() })
    }
    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.inner.hpke_open(config, input, sk_r, info, aad)
    }
    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        ensure_x25519(&config)?;
        let (kem_output, context) = self
            .hpke(config)
            .setup_sender(&pk_r.into(), info, None, None, None)
            .map_err(|_| CryptoError::SenderSetupError)?;
        let exported = context.export(exporter_context, exporter_length).map_err(|_| CryptoError::ExporterError)?;
        Ok((kem_output, exported.into()))
    }
    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.inner.hpke_setup_receiver_and_export(config, enc, sk_r, info, exporter_context, exporter_length)
    }
    fn derive_hpke_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError> {
        self.inner.derive_hpke_keypair(config, ikm)
    }
}

/// Why the provider could not produce randomness (never, in practice).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("randomness unavailable")]
pub struct RandError;

impl OpenMlsRand for SeededCrypto {
    type Error = RandError;
    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        let mut out = [0u8; N];
        self.fill(&mut out);
        Ok(out)
    }
    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        let mut out = vec![0u8; len];
        self.fill(&mut out);
        Ok(out)
    }
}

/// The provider nymstr uses everywhere (client members, the steward, the simulator):
/// seeded crypto and openmls' in-memory storage. Persistence copies the storage's
/// key-value records out (`storage().values`) after each operation; see `specs/groups.md`.
#[derive(Debug)]
pub struct NymstrProvider {
    crypto: SeededCrypto,
    storage: MemoryStorage,
}

impl NymstrProvider {
    pub fn new(seed: [u8; 32]) -> Self {
        Self { crypto: SeededCrypto::new(seed), storage: MemoryStorage::default() }
    }

    /// A provider over previously saved storage records.
    pub fn with_storage(seed: [u8; 32], storage: MemoryStorage) -> Self {
        Self { crypto: SeededCrypto::new(seed), storage }
    }
}

impl OpenMlsProvider for NymstrProvider {
    type CryptoProvider = SeededCrypto;
    type RandProvider = SeededCrypto;
    type StorageProvider = MemoryStorage;

    fn storage(&self) -> &Self::StorageProvider {
        &self.storage
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        &self.crypto
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seal example of `specs/groups.md` §2.1.
    #[test]
    fn the_seal_seed_example_of_the_spec() {
        let crypto = SeededCrypto::new([7; 32]);
        let pk_r = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([9; 32])).to_bytes();
        let config = DEFAULT_CIPHERSUITE.hpke_config();
        let parts: [&[u8]; 4] = [&pk_r, b"info", b"aad", b"plaintext"];
        assert_eq!(hex::encode(crypto.seal_key), "f400927857aaf64114f561baacb379708c79a1dc1476ab573216a4020764bde5");
        assert_eq!(
            hex::encode(crypto.seal_seed(&config, &parts)),
            "12b7068d96d3d7a6cad8b74f002e1a60fe5a298dacd8a886d4bf234776070bee"
        );
        let ct =
            crypto.hpke_seal(DEFAULT_CIPHERSUITE.hpke_config(), &pk_r, b"info", b"aad", b"plaintext").expect("seal");
        assert_eq!(
            hex::encode(ct.kem_output.as_slice()),
            "8ae089be208a4d8e84f780cf105f46fd3272c716f0f2d0f2f1f63ea69c3aa77c"
        );
        // hpke-rs derives the ephemeral key with DeriveKeyPair from the generator's first
        // 32 bytes (not with `SeededHpke::kem_key_gen`).
        let mut ikm = [0u8; 32];
        ChaCha20Rng::from_seed(crypto.seal_seed(&config, &parts)).fill_bytes(&mut ikm);
        let derived = crypto.derive_hpke_keypair(DEFAULT_CIPHERSUITE.hpke_config(), &ikm).expect("derive");
        assert_eq!(derived.public, ct.kem_output.as_slice());
        // The config is an input: another AEAD gives another seed.
        let chacha = HpkeConfig(config.0, config.1, HpkeAeadType::ChaCha20Poly1305);
        assert_ne!(crypto.seal_seed(&chacha, &parts), crypto.seal_seed(&config, &parts));
    }
}
