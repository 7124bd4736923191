//! MLS commit latency against group size: "one new member joins a group of N", for
//! N in {2, 10, 100, 1000}, bare openmls beside the nymstr path on the same machine.
//! Run: `cargo bench -p nymstr-benches --bench mls`. Figures: BENCHMARKS.md.
//!
//! * `bare`: `OpenMlsRustCrypto`, `SignatureKeyPair`, a short `BasicCredential`, openmls'
//!   default group configuration (commits as `PrivateMessage`s, no ratchet-tree extension:
//!   the tree travels beside the GroupInfo).
//! * `nymstr`: the seeded `NymstrProvider`, `InstallationSigner`, the `MemberIdentity`
//!   credential (username + account-signed installation certificate), the `GroupPolicy`
//!   extension in the group context, the ratchet-tree extension on, handshake messages as
//!   `PublicMessage`s so the steward can validate them.
//!
//! Both groups are built the same way, outside the timed section: the admin adds the other
//! N-1 members from KeyPackages, 100 per commit; the existing member `B` joined from the
//! last Welcome. Every measurement starts from the same epoch: group states are re-loaded
//! from a copy of the party's `MemoryStorage` in `iter_batched`'s setup.
//!
//! Operations (each bench id is `mls_N/{bare,nymstr}/OP`):
//! * `add_commit`: the admin adds one member from a KeyPackage (`add_members`, which sends
//!   an update path) and merges; commit and Welcome serialised.
//! * `add_process`: B deserialises, processes and merges that commit.
//! * `ext_commit`: a joiner deserialises the GroupInfo (+ ratchet tree), builds the external
//!   commit and finalizes (nymstr: the commit also carries the new epoch's GroupInfo with
//!   the ratchet tree, as `GroupUpload` requires); outputs serialised.
//! * `ext_process`: B processes and merges the external commit.
//! * `ext_public`: the steward's view: `PublicGroup::process_message` + `merge_commit`.
//! * `ext_steward` (nymstr): everything the steward (`node/src/actors/steward.rs`) does to
//!   accept an external join, mirrored here because it exposes no standalone validation
//!   function: `ext_public`, the joiner's credential, the merge on a re-loaded copy of the
//!   state and the checks of the uploaded GroupInfo (see [`op_steward_mirror`]).
//! * `tree_import`: the joiner's O(N) part alone: `PublicGroup::from_external` from the
//!   GroupInfo and ratchet tree (every leaf and parent-hash checked).
//! * `group_info_export`: `export_group_info` with the ratchet tree, serialised.
//! * `verify_credentials` (nymstr): `MemberIdentity::verify` on every leaf of the tree.
//!
//! Per group size the bench also prints (lines `sizes` and `profile`): the bytes of the
//! GroupInfo, commits and steward state; whether the joiner's external commit replays
//! byte for byte from the same seed (on rayon's pool, and on one thread); and per
//! operation, one run on a single rayon thread under a profiling provider: how many calls
//! to each crypto primitive (and the signer), the time spent in them, and the phases, so
//! that "what dominates" is measured rather than guessed.
//!
//! `MLS_SIZES=2,10` limits the run to those sizes (a quick check).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{BatchSize, Criterion, SamplingMode, criterion_group, criterion_main};
use ed25519_dalek::SigningKey;
use nymstr_mls::{
    DEFAULT_CIPHERSUITE, GroupPolicy, InstallationSigner, MemberIdentity, NymstrProvider, POLICY_EXTENSION_TYPE,
    SUPPORTED_CIPHERSUITES, lifetime_from,
};
use nymstr_proto::identity;
use openmls::ciphersuite::signable::Verifiable as _;
use openmls::prelude::group_info::VerifiableGroupInfo;
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::*;
use openmls_basic_credential::SignatureKeyPair;
use openmls_memory_storage::MemoryStorage;
use openmls_rust_crypto::OpenMlsRustCrypto;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::types::{
    AeadType, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig, HpkeKeyPair, KemOutput, SignatureScheme,
};
use tls_codec::SecretVLBytes;

const SIZES: [usize; 4] = [2, 10, 100, 1000];
/// Members added per commit while building a fixture.
const BATCH: usize = 100;

type Values = HashMap<Vec<u8>, Vec<u8>>;

/// Party ids: distinct seeds for the seeded provider (two parties drawing from one seed
/// would generate the same keys).
const ADMIN: u64 = 1;
const MEMBER_B: u64 = 2;
const KEY_PACKAGES: u64 = 3;
const JOINER: u64 = 4;
/// The admin re-loaded for `add_commit` (a fresh stream, so its new keys are not replays
/// of keys it drew while building the group).
const ADMIN_AGAIN: u64 = 5;
const STEWARD: u64 = 6;

fn snapshot(storage: &MemoryStorage) -> Values {
    storage.values.read().expect("storage lock").clone()
}

fn to_in(bytes: &[u8]) -> MlsMessageIn {
    MlsMessageIn::tls_deserialize_exact(bytes).expect("message decodes")
}

fn ser(m: &MlsMessageOut) -> Vec<u8> {
    m.tls_serialize_detached().expect("message encodes")
}

// ---------------------------------------------------------------------------------------
// The two configurations
// ---------------------------------------------------------------------------------------

trait Flavor: Sync {
    type P: OpenMlsProvider<StorageProvider = MemoryStorage>;
    type S: Signer + Sync;
    const NAME: &'static str;
    /// A provider over the given storage records.
    fn provider(&self, party: u64, values: Values) -> Self::P;
    fn member(&self, i: u64) -> (Self::S, CredentialWithKey);
    fn create_config(&self, admin: &CredentialWithKey) -> MlsGroupCreateConfig;
    fn join_config(&self) -> MlsGroupJoinConfig;
    fn key_package(&self, p: &Self::P, s: &Self::S, c: CredentialWithKey) -> KeyPackage;
    /// Leaf parameters of an external joiner's leaf.
    fn leaf_parameters(&self) -> LeafNodeParameters;
    /// nymstr carries the ratchet tree in the GroupInfo; bare openmls sends it beside.
    fn tree_in_group_info(&self) -> bool;
    /// Whether the joiner's commit also carries the new epoch's GroupInfo.
    fn commit_carries_group_info(&self) -> bool;
}

struct Bare;

impl Flavor for Bare {
    type P = OpenMlsRustCrypto;
    type S = SignatureKeyPair;
    const NAME: &'static str = "bare";

    fn provider(&self, _party: u64, values: Values) -> OpenMlsRustCrypto {
        let p = OpenMlsRustCrypto::default();
        *p.storage().values.write().expect("storage lock") = values;
        p
    }
    fn member(&self, i: u64) -> (SignatureKeyPair, CredentialWithKey) {
        let keys = SignatureKeyPair::new(SignatureScheme::ED25519).expect("keygen");
        let credential = BasicCredential::new(format!("member-{i}").into_bytes()).into();
        let signature_key = keys.public().into();
        (keys, CredentialWithKey { credential, signature_key })
    }
    fn create_config(&self, _admin: &CredentialWithKey) -> MlsGroupCreateConfig {
        MlsGroupCreateConfig::builder().ciphersuite(DEFAULT_CIPHERSUITE).build()
    }
    fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::default()
    }
    fn key_package(&self, p: &OpenMlsRustCrypto, s: &SignatureKeyPair, c: CredentialWithKey) -> KeyPackage {
        KeyPackage::builder().build(DEFAULT_CIPHERSUITE, p, s, c).expect("key package").key_package().clone()
    }
    fn leaf_parameters(&self) -> LeafNodeParameters {
        LeafNodeParameters::builder().build()
    }
    fn tree_in_group_info(&self) -> bool {
        false
    }
    fn commit_carries_group_info(&self) -> bool {
        false
    }
}

struct Nymstr;

fn seed(party: u64, salt: u8) -> [u8; 32] {
    let mut s = [salt; 32];
    s[..8].copy_from_slice(&party.to_le_bytes());
    s
}

fn nymstr_capabilities() -> Capabilities {
    Capabilities::new(
        None,
        Some(&SUPPORTED_CIPHERSUITES),
        Some(&[ExtensionType::Unknown(POLICY_EXTENSION_TYPE)]),
        None,
        None,
    )
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs()
}

impl Flavor for Nymstr {
    type P = NymstrProvider;
    type S = InstallationSigner;
    const NAME: &'static str = "nymstr";

    fn provider(&self, party: u64, values: Values) -> NymstrProvider {
        NymstrProvider::with_storage(seed(party, 0xA5), MemoryStorage { values: RwLock::new(values) })
    }
    fn member(&self, i: u64) -> (InstallationSigner, CredentialWithKey) {
        let account = SigningKey::from_bytes(&seed(i, 1));
        let installation = SigningKey::from_bytes(&seed(i, 2));
        let key = installation.verifying_key().to_bytes();
        let cert = identity::issue_cert(&account, &key, &seed(i, 3), 1_767_225_600_000_000);
        let id = MemberIdentity { username: format!("member{i}"), cert };
        let c = CredentialWithKey { credential: id.credential(), signature_key: key.to_vec().into() };
        (InstallationSigner(installation), c)
    }
    fn create_config(&self, admin: &CredentialWithKey) -> MlsGroupCreateConfig {
        let admin_key: [u8; 32] = admin.signature_key.as_slice().try_into().expect("ed25519 key");
        let policy = GroupPolicy { admins: vec![admin_key], open: true }.normalized();
        MlsGroupCreateConfig::builder()
            .ciphersuite(DEFAULT_CIPHERSUITE)
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .capabilities(nymstr_capabilities())
            .lifetime(lifetime_from(now_s(), 90 * 86_400))
            .with_group_context_extensions(Extensions::single(policy.extension()).expect("policy extension"))
            .build()
    }
    fn join_config(&self) -> MlsGroupJoinConfig {
        MlsGroupJoinConfig::builder()
            .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
            .use_ratchet_tree_extension(true)
            .build()
    }
    fn key_package(&self, p: &NymstrProvider, s: &InstallationSigner, c: CredentialWithKey) -> KeyPackage {
        KeyPackage::builder()
            .leaf_node_capabilities(nymstr_capabilities())
            .key_package_lifetime(lifetime_from(now_s(), 90 * 86_400))
            .build(DEFAULT_CIPHERSUITE, p, s, c)
            .expect("key package")
            .key_package()
            .clone()
    }
    fn leaf_parameters(&self) -> LeafNodeParameters {
        LeafNodeParameters::builder().with_capabilities(nymstr_capabilities()).build()
    }
    fn tree_in_group_info(&self) -> bool {
        true
    }
    fn commit_carries_group_info(&self) -> bool {
        true
    }
}

// ---------------------------------------------------------------------------------------
// The operations, generic over provider and signer (so they also run under `Prof`)
// ---------------------------------------------------------------------------------------

/// The admin adds one member and merges; returns the serialised commit.
fn op_add_commit<P: OpenMlsProvider>(p: &P, s: &impl Signer, group: &mut MlsGroup, kp: KeyPackage) -> Vec<u8> {
    let (commit, welcome, group_info) = group.add_members(p, s, &[kp]).expect("add");
    group.merge_pending_commit(p).expect("merge");
    std::hint::black_box((ser(&welcome), group_info.map(MlsMessageOut::from).as_ref().map(ser)));
    ser(&commit)
}

/// A member processes and merges a commit.
fn op_process<P: OpenMlsProvider>(p: &P, group: &mut MlsGroup, commit: &[u8]) {
    let msg = to_in(commit).try_into_protocol_message().expect("protocol message");
    let processed = group.process_message(p, msg).expect("process");
    match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            group.merge_staged_commit(p, *staged).expect("merge");
        }
        _ => panic!("expected a commit"),
    }
}

/// The steward's validation on its public view of the group.
fn op_public_process(crypto: &impl OpenMlsCrypto, storage: &MemoryStorage, pg: &mut PublicGroup, commit: &[u8]) {
    let msg = to_in(commit).try_into_protocol_message().expect("protocol message");
    let processed = pg.process_message(crypto, msg).expect("steward process");
    match processed.into_content() {
        ProcessedMessageContent::StagedCommitMessage(staged) => {
            pg.merge_commit(storage, *staged).expect("steward merge");
        }
        _ => panic!("expected a commit"),
    }
}

/// What nymstr's steward does with an external join beyond the two `PublicGroup` calls:
/// a mirror of `on_external_commit` + `merge` in `node/src/actors/steward.rs` (at `c0a4cde`;
/// the steward exposes no standalone validation function, so its steps are repeated here):
/// process, check the joiner's credential, merge on a copy of the state re-loaded from
/// storage, then check the uploaded GroupInfo (parse, group context, confirmation tag,
/// ratchet tree equal to ours byte for byte, signature by the joiner's leaf key). Not included: policy checks
/// (a few comparisons), the store writes of `sync_mls` (blake3 of every record).
fn op_steward_mirror(
    crypto: &impl OpenMlsCrypto,
    storage: &MemoryStorage,
    pg: &PublicGroup,
    commit: &[u8],
    group_info: &[u8],
) -> (MemoryStorage, PublicGroup) {
    let msg = to_in(commit).try_into_protocol_message().expect("protocol message");
    let processed = pg.process_message(crypto, msg).expect("steward process");
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        panic!("expected a commit")
    };
    let leaf = staged.update_path_leaf_node().expect("external commits carry a path");
    MemberIdentity::verify(leaf.credential(), leaf.signature_key().as_slice()).expect("joiner credential");
    let joiner = leaf.signature_key().as_slice().to_vec();
    let trial_storage = MemoryStorage { values: RwLock::new(snapshot(storage)) };
    let mut trial = PublicGroup::load(&trial_storage, pg.group_id()).expect("load").expect("stored");
    trial.merge_commit(&trial_storage, *staged).expect("steward merge");
    let MlsMessageBodyIn::GroupInfo(vgi) = to_in(group_info).extract() else { panic!("expected a GroupInfo") };
    assert!(vgi.group_context() == trial.group_context(), "group info is for the new epoch");
    let tbs = vgi.unsigned_payload().expect("group info payload");
    let mut expected = trial.group_context().tls_serialize_detached().expect("context");
    expected.extend(vgi.extensions().tls_serialize_detached().expect("extensions"));
    expected.extend(trial.confirmation_tag().tls_serialize_detached().expect("tag"));
    assert!(tbs.starts_with(&expected), "group info commits to the commit's confirmation tag");
    let sent = vgi.extensions().ratchet_tree().expect("tree").ratchet_tree().tls_serialize_detached().expect("tree");
    let ours = trial.export_ratchet_tree().tls_serialize_detached().expect("tree");
    assert!(sent == ours, "group info carries the new epoch's tree");
    let pk = OpenMlsSignaturePublicKey::new(joiner.into(), SignatureScheme::ED25519).expect("key");
    vgi.verify_no_out(crypto, &pk).expect("group info signed by the joiner");
    (trial_storage, trial)
}

fn group_info_in(group_info: &[u8], tree: Option<&[u8]>) -> (VerifiableGroupInfo, RatchetTreeIn) {
    let MlsMessageBodyIn::GroupInfo(vgi) = to_in(group_info).extract() else { panic!("expected a GroupInfo") };
    let tree = match tree {
        Some(bytes) => RatchetTreeIn::tls_deserialize_exact(bytes).expect("tree decodes"),
        None => vgi.extensions().ratchet_tree().expect("ratchet tree extension").ratchet_tree().clone(),
    };
    (vgi, tree)
}

/// The joiner's group, its serialised commit and (nymstr) the GroupInfo it uploads.
type Joined = (MlsGroup, Vec<u8>, Option<Vec<u8>>);

/// A joiner builds and finalizes an external commit from a GroupInfo (+ tree).
#[allow(clippy::too_many_arguments)]
fn op_ext_commit<P: OpenMlsProvider>(
    p: &P,
    s: &impl Signer,
    credential: CredentialWithKey,
    config: &MlsGroupJoinConfig,
    leaf: LeafNodeParameters,
    with_group_info: bool,
    group_info: &[u8],
    tree: Option<&[u8]>,
) -> Joined {
    let (vgi, tree) = group_info_in(group_info, tree);
    let builder = MlsGroup::external_commit_builder()
        .with_config(config.clone())
        .with_ratchet_tree(tree)
        .build_group(p, vgi, credential)
        .expect("external commit builder")
        .leaf_node_parameters(leaf)
        .load_psks(p.storage())
        .expect("psks");
    let builder = if with_group_info { builder.use_ratchet_tree_extension(true) } else { builder };
    let (group, bundle) =
        builder.build(p.rand(), p.crypto(), s, |_| true).expect("build").finalize(p).expect("finalize");
    let (commit, _welcome, group_info) = bundle.into_messages();
    (group, ser(&commit), group_info.as_ref().map(ser))
}

/// The joiner's tree import alone.
fn op_tree_import(
    crypto: &impl OpenMlsCrypto,
    storage: &MemoryStorage,
    group_info: &[u8],
    tree: Option<&[u8]>,
) -> PublicGroup {
    let (vgi, tree) = group_info_in(group_info, tree);
    PublicGroup::from_external(crypto, storage, tree, vgi, ProposalStore::new()).expect("tree import").0
}

fn op_group_info_export(crypto: &impl OpenMlsCrypto, s: &impl Signer, group: &MlsGroup) -> Vec<u8> {
    ser(&group.export_group_info(crypto, s, true).expect("group info"))
}

fn op_verify_credentials(group: &MlsGroup) -> usize {
    let mut verified = 0;
    for m in group.members() {
        MemberIdentity::verify(&m.credential, &m.signature_key).expect("credential verifies");
        verified += 1;
    }
    verified
}

// ---------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------

struct Fixture<F: Flavor> {
    group_id: GroupId,
    admin_signer: F::S,
    admin: Values,
    member: Values,
    steward: Values,
    /// KeyPackage of the member the admin adds in `add_commit`.
    new_kp: KeyPackage,
    add_commit: Vec<u8>,
    group_info: Vec<u8>,
    /// The ratchet tree, when it is not inside the GroupInfo.
    tree: Option<Vec<u8>>,
    joiner_signer: F::S,
    joiner: CredentialWithKey,
    ext_commit: Vec<u8>,
    /// The new epoch's GroupInfo the joiner uploads with its commit (nymstr).
    ext_group_info: Option<Vec<u8>>,
}

fn build<F: Flavor>(f: &F, n: usize) -> Fixture<F> {
    let started = Instant::now();
    let admin_p = f.provider(ADMIN, Values::new());
    let (admin_s, admin_c) = f.member(0);
    let mut gid = [0u8; 16];
    gid[..8].copy_from_slice(&(n as u64).to_le_bytes());
    let group_id = GroupId::from_slice(&gid);
    let mut admin =
        MlsGroup::new_with_group_id(&admin_p, &admin_s, &f.create_config(&admin_c), group_id.clone(), admin_c)
            .expect("group");

    // Members 1..n; the last one is B, whose private keys live in B's provider.
    let kp_p = f.provider(KEY_PACKAGES, Values::new());
    let b_p = f.provider(MEMBER_B, Values::new());
    let kps: Vec<KeyPackage> = (1..n as u64)
        .map(|i| {
            let (s, c) = f.member(i);
            f.key_package(if i == n as u64 - 1 { &b_p } else { &kp_p }, &s, c)
        })
        .collect();
    let mut last_welcome = None;
    for chunk in kps.chunks(BATCH) {
        let (_commit, welcome, _gi) = admin.add_members(&admin_p, &admin_s, chunk).expect("batch add");
        admin.merge_pending_commit(&admin_p).expect("batch merge");
        last_welcome = Some(ser(&welcome));
    }
    assert_eq!(admin.members().count(), n);

    let tree_bytes = admin.export_ratchet_tree().tls_serialize_detached().expect("tree encodes");
    let MlsMessageBodyIn::Welcome(welcome) = to_in(&last_welcome.expect("n >= 2")).extract() else {
        panic!("expected a Welcome")
    };
    let tree_for_b =
        (!f.tree_in_group_info()).then(|| RatchetTreeIn::tls_deserialize_exact(&tree_bytes).expect("tree decodes"));
    let b = StagedWelcome::new_from_welcome(&b_p, &f.join_config(), welcome, tree_for_b)
        .expect("welcome")
        .into_group(&b_p)
        .expect("B joins");
    assert_eq!(b.epoch(), admin.epoch());
    drop(b);

    // The steward's public view, from a GroupInfo with the tree.
    let steward_p = f.provider(STEWARD, Values::new());
    let full_gi = ser(&admin.export_group_info(admin_p.crypto(), &admin_s, true).expect("group info"));
    op_tree_import(steward_p.crypto(), steward_p.storage(), &full_gi, None);

    let group_info =
        ser(&admin.export_group_info(admin_p.crypto(), &admin_s, f.tree_in_group_info()).expect("group info"));
    let tree = (!f.tree_in_group_info()).then_some(tree_bytes);

    // One add commit and one external commit, made once, for the processing benches.
    let (s, c) = f.member(n as u64);
    let new_kp = f.key_package(&kp_p, &s, c);
    let admin_values = snapshot(admin_p.storage());
    let add_commit = {
        let p = f.provider(ADMIN_AGAIN, admin_values.clone());
        let mut g = MlsGroup::load(p.storage(), &group_id).expect("load").expect("stored");
        op_add_commit(&p, &admin_s, &mut g, new_kp.clone())
    };
    let (joiner_signer, joiner) = f.member(n as u64 + 1);
    let join = || {
        let p = f.provider(JOINER, Values::new());
        let (_, commit, gi) = op_ext_commit(
            &p,
            &joiner_signer,
            joiner.clone(),
            &f.join_config(),
            f.leaf_parameters(),
            f.commit_carries_group_info(),
            &group_info,
            tree.as_deref(),
        );
        (commit, gi)
    };
    let (ext_commit, ext_group_info) = join();
    // The same party from the same seed and state: does it produce the same bytes?
    let replays = join().0 == ext_commit;
    let one_thread = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("rayon pool");
    let replays_one_thread = one_thread.install(|| join().0 == one_thread.install(|| join().0));
    let steward_bytes: usize = snapshot(steward_p.storage()).iter().map(|(k, v)| k.len() + v.len()).sum();
    println!(
        "sizes {} n={n}: GroupInfo {} B{}, add commit {} B, external commit {} B{}, steward MemoryStorage {} B; \
         external commit replays from the same seed: {replays} (on one rayon thread: {replays_one_thread})",
        F::NAME,
        group_info.len(),
        tree.as_ref().map(|t| format!(" + ratchet tree {} B", t.len())).unwrap_or_default(),
        add_commit.len(),
        ext_commit.len(),
        ext_group_info.as_ref().map(|g| format!(" + GroupInfo {} B", g.len())).unwrap_or_default(),
        steward_bytes,
    );
    println!("fixture {} n={n}: built in {:.1} s", F::NAME, started.elapsed().as_secs_f64());
    Fixture {
        group_id,
        admin_signer: admin_s,
        admin: admin_values,
        member: snapshot(b_p.storage()),
        steward: snapshot(steward_p.storage()),
        new_kp,
        add_commit,
        group_info,
        tree,
        joiner_signer,
        joiner,
        ext_commit,
        ext_group_info,
    }
}

impl<F: Flavor> Fixture<F> {
    fn load(&self, f: &F, party: u64, values: &Values) -> (F::P, MlsGroup) {
        let p = f.provider(party, values.clone());
        let g = MlsGroup::load(p.storage(), &self.group_id).expect("load").expect("stored");
        (p, g)
    }

    fn load_public(&self, f: &F) -> (F::P, PublicGroup) {
        let p = f.provider(STEWARD, self.steward.clone());
        let pg = PublicGroup::load(p.storage(), &self.group_id).expect("load").expect("stored");
        (p, pg)
    }
}

// ---------------------------------------------------------------------------------------
// Benches
// ---------------------------------------------------------------------------------------

fn group(c: &mut Criterion, n: usize) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(format!("mls_{n}"));
    if n >= 1000 {
        g.sample_size(10).sampling_mode(SamplingMode::Flat).warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));
    } else {
        g.sample_size(20).warm_up_time(Duration::from_millis(500));
        g.measurement_time(Duration::from_secs(2));
    }
    g
}

fn bench_flavor<F: Flavor>(c: &mut Criterion, f: &F, n: usize, fx: &Fixture<F>) {
    let mut g = group(c, n);
    let name = F::NAME;
    let per = BatchSize::PerIteration;

    g.bench_function(format!("{name}/add_commit"), |b| {
        b.iter_batched(
            || (fx.load(f, ADMIN_AGAIN, &fx.admin), fx.new_kp.clone()),
            |((p, mut grp), kp)| {
                op_add_commit(&p, &fx.admin_signer, &mut grp, kp);
                (p, grp)
            },
            per,
        )
    });
    g.bench_function(format!("{name}/add_process"), |b| {
        b.iter_batched(
            || fx.load(f, MEMBER_B, &fx.member),
            |(p, mut grp)| {
                op_process(&p, &mut grp, &fx.add_commit);
                (p, grp)
            },
            per,
        )
    });
    g.bench_function(format!("{name}/ext_commit"), |b| {
        b.iter_batched(
            || f.provider(JOINER, Values::new()),
            |p| {
                let j = op_ext_commit(
                    &p,
                    &fx.joiner_signer,
                    fx.joiner.clone(),
                    &f.join_config(),
                    f.leaf_parameters(),
                    f.commit_carries_group_info(),
                    &fx.group_info,
                    fx.tree.as_deref(),
                );
                (p, j)
            },
            per,
        )
    });
    g.bench_function(format!("{name}/ext_process"), |b| {
        b.iter_batched(
            || fx.load(f, MEMBER_B, &fx.member),
            |(p, mut grp)| {
                op_process(&p, &mut grp, &fx.ext_commit);
                (p, grp)
            },
            per,
        )
    });
    g.bench_function(format!("{name}/ext_public"), |b| {
        b.iter_batched(
            || fx.load_public(f),
            |(p, mut pg)| {
                op_public_process(p.crypto(), p.storage(), &mut pg, &fx.ext_commit);
                (p, pg)
            },
            per,
        )
    });
    g.bench_function(format!("{name}/tree_import"), |b| {
        b.iter_batched(
            || f.provider(JOINER, Values::new()),
            |p| {
                let pg = op_tree_import(p.crypto(), p.storage(), &fx.group_info, fx.tree.as_deref());
                (p, pg)
            },
            per,
        )
    });
    g.bench_function(format!("{name}/group_info_export"), |b| {
        b.iter_batched_ref(
            || fx.load(f, ADMIN_AGAIN, &fx.admin),
            |(p, grp)| op_group_info_export(p.crypto(), &fx.admin_signer, grp),
            per,
        )
    });
    g.finish();
}

fn bench_nymstr_extra(c: &mut Criterion, n: usize, fx: &Fixture<Nymstr>) {
    let mut g = group(c, n);
    let gi = fx.ext_group_info.as_deref().expect("nymstr joiners upload a GroupInfo");
    g.bench_function("nymstr/ext_steward", |b| {
        b.iter_batched(
            || fx.load_public(&Nymstr),
            |(p, pg)| {
                let merged = op_steward_mirror(p.crypto(), p.storage(), &pg, &fx.ext_commit, gi);
                (p, pg, merged)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("nymstr/verify_credentials", |b| {
        b.iter_batched_ref(
            || fx.load(&Nymstr, MEMBER_B, &fx.member),
            |(_, grp)| op_verify_credentials(grp),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

// ---------------------------------------------------------------------------------------
// Profile: one run of each operation with every crypto call counted and timed
// ---------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats(Mutex<BTreeMap<&'static str, (u64, Duration)>>);

impl Stats {
    fn time<R>(&self, name: &'static str, f: impl FnOnce() -> R) -> R {
        let t = Instant::now();
        let r = f();
        let d = t.elapsed();
        let mut m = self.0.lock().expect("stats lock");
        let e = m.entry(name).or_default();
        e.0 += 1;
        e.1 += d;
        r
    }
    fn report(&self, what: &str, total: Duration) {
        let m = self.0.lock().expect("stats lock");
        let ms = |d: &Duration| d.as_secs_f64() * 1e3;
        // Entries named "@..." are phases of the operation, not crypto calls.
        let crypto: Duration = m.iter().filter(|(k, _)| !k.starts_with('@')).map(|(_, (_, d))| *d).sum();
        let mut parts: Vec<_> = m.iter().filter(|(k, _)| !k.starts_with('@')).collect();
        parts.sort_by_key(|(_, (_, d))| std::cmp::Reverse(*d));
        let parts: Vec<String> = parts
            .iter()
            .filter(|(_, (_, d))| d.as_secs_f64() >= total.as_secs_f64() * 0.01)
            .map(|(k, (n, d))| format!("{k} {n}x {:.2} ms", ms(d)))
            .collect();
        let phases: Vec<String> = m
            .iter()
            .filter(|(k, _)| k.starts_with('@'))
            .map(|(k, (_, d))| format!("{} {:.2} ms", &k[1..], ms(d)))
            .collect();
        println!(
            "profile {what}: total {:.2} ms = crypto {:.2} ms + other {:.2} ms | {}{}",
            ms(&total),
            ms(&crypto),
            ms(&total.saturating_sub(crypto)),
            parts.join(", "),
            if phases.is_empty() { String::new() } else { format!(" | phases: {}", phases.join(", ")) }
        );
    }
}

struct ProfCrypto<'a, C> {
    inner: &'a C,
    stats: &'a Stats,
}

struct Prof<'a, P: OpenMlsProvider> {
    inner: &'a P,
    crypto: ProfCrypto<'a, P::CryptoProvider>,
}

impl<'a, P: OpenMlsProvider> Prof<'a, P> {
    fn new(inner: &'a P, stats: &'a Stats) -> Self {
        Prof { inner, crypto: ProfCrypto { inner: inner.crypto(), stats } }
    }
}

impl<'a, P: OpenMlsProvider> OpenMlsProvider for Prof<'a, P> {
    type CryptoProvider = ProfCrypto<'a, P::CryptoProvider>;
    type RandProvider = P::RandProvider;
    type StorageProvider = P::StorageProvider;
    fn storage(&self) -> &Self::StorageProvider {
        self.inner.storage()
    }
    fn crypto(&self) -> &Self::CryptoProvider {
        &self.crypto
    }
    fn rand(&self) -> &Self::RandProvider {
        self.inner.rand()
    }
}

struct ProfSigner<'a, S> {
    inner: &'a S,
    stats: &'a Stats,
}

impl<S: Signer> Signer for ProfSigner<'_, S> {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        self.stats.time("sign", || self.inner.sign(payload))
    }
    fn signature_scheme(&self) -> SignatureScheme {
        self.inner.signature_scheme()
    }
}

impl<C: OpenMlsCrypto> OpenMlsCrypto for ProfCrypto<'_, C> {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.inner.supports(ciphersuite)
    }
    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.inner.supported_ciphersuites()
    }
    fn hkdf_extract(&self, hash_type: HashType, salt: &[u8], ikm: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        self.stats.time("hkdf", || self.inner.hkdf_extract(hash_type, salt, ikm))
    }
    fn hmac(&self, hash_type: HashType, key: &[u8], message: &[u8]) -> Result<SecretVLBytes, CryptoError> {
        self.stats.time("hmac", || self.inner.hmac(hash_type, key, message))
    }
    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.stats.time("hkdf", || self.inner.hkdf_expand(hash_type, prk, info, okm_len))
    }
    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.stats.time("hash", || self.inner.hash(hash_type, data))
    }
    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.stats.time("aead", || self.inner.aead_encrypt(alg, key, data, nonce, aad))
    }
    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.stats.time("aead", || self.inner.aead_decrypt(alg, key, ct_tag, nonce, aad))
    }
    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.stats.time("signature_key_gen", || self.inner.signature_key_gen(alg))
    }
    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        self.stats.time("verify_signature", || self.inner.verify_signature(alg, data, pk, signature))
    }
    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.stats.time("sign", || self.inner.sign(alg, data, key))
    }
    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.stats.time("hpke_seal", || self.inner.hpke_seal(config, pk_r, info, aad, ptxt))
    }
    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.stats.time("hpke_open", || self.inner.hpke_open(config, input, sk_r, info, aad))
    }
    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.stats.time("hpke_export", || {
            self.inner.hpke_setup_sender_and_export(config, pk_r, info, exporter_context, exporter_length)
        })
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
        self.stats.time("hpke_export", || {
            self.inner.hpke_setup_receiver_and_export(config, enc, sk_r, info, exporter_context, exporter_length)
        })
    }
    fn derive_hpke_keypair(&self, config: HpkeConfig, ikm: &[u8]) -> Result<HpkeKeyPair, CryptoError> {
        self.stats.time("derive_hpke_keypair", || self.inner.derive_hpke_keypair(config, ikm))
    }
}

/// A member's processing, with process and merge timed as phases.
fn op_process_phased<P: OpenMlsProvider>(p: &P, st: &Stats, group: &mut MlsGroup, commit: &[u8]) {
    let processed = st.time("@process_message", || {
        let msg = to_in(commit).try_into_protocol_message().expect("protocol message");
        group.process_message(p, msg).expect("process")
    });
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        panic!("expected a commit")
    };
    st.time("@merge_staged_commit", || group.merge_staged_commit(p, *staged).expect("merge"));
}

/// The steward's two calls, timed as phases.
fn op_public_process_phased(
    crypto: &impl OpenMlsCrypto,
    st: &Stats,
    storage: &MemoryStorage,
    pg: &mut PublicGroup,
    commit: &[u8],
) {
    let processed = st.time("@process_message", || {
        let msg = to_in(commit).try_into_protocol_message().expect("protocol message");
        pg.process_message(crypto, msg).expect("steward process")
    });
    let ProcessedMessageContent::StagedCommitMessage(staged) = processed.into_content() else {
        panic!("expected a commit")
    };
    st.time("@merge_commit", || pg.merge_commit(storage, *staged).expect("steward merge"));
}

fn profile<F: Flavor>(f: &F, n: usize, fx: &Fixture<F>) {
    // One thread: openmls encrypts the update path on rayon's pool, and summed crypto time
    // only adds up to wall time when nothing runs in parallel. Each body loads its state,
    // then times only the operation. One warm-up run (cold caches, allocator growth), then
    // the fastest of three (the machine is shared).
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().expect("rayon pool");
    let run = |op: &str, body: &(dyn Fn(&Stats) -> Duration + Sync)| {
        pool.install(|| body(&Stats::default()));
        let (stats, elapsed) = (0..3)
            .map(|_| {
                let stats = Stats::default();
                let elapsed = pool.install(|| body(&stats));
                (stats, elapsed)
            })
            .min_by_key(|(_, elapsed)| *elapsed)
            .expect("three runs");
        stats.report(&format!("mls_{n}/{}/{op} (1 thread, best of 3)", F::NAME), elapsed);
    };
    fn timed(f: impl FnOnce()) -> Duration {
        let t = Instant::now();
        f();
        t.elapsed()
    }
    run("add_commit", &|st| {
        let (p, mut g) = fx.load(f, ADMIN_AGAIN, &fx.admin);
        let signer = ProfSigner { inner: &fx.admin_signer, stats: st };
        let kp = fx.new_kp.clone();
        let pp = Prof::new(&p, st);
        timed(|| {
            op_add_commit(&pp, &signer, &mut g, kp);
        })
    });
    run("add_process", &|st| {
        let (p, mut g) = fx.load(f, MEMBER_B, &fx.member);
        let pp = Prof::new(&p, st);
        timed(|| op_process_phased(&pp, st, &mut g, &fx.add_commit))
    });
    run("ext_commit", &|st| {
        let p = f.provider(JOINER, Values::new());
        let pp = Prof::new(&p, st);
        let signer = ProfSigner { inner: &fx.joiner_signer, stats: st };
        let (config, leaf) = (f.join_config(), f.leaf_parameters());
        timed(|| {
            op_ext_commit(
                &pp,
                &signer,
                fx.joiner.clone(),
                &config,
                leaf,
                f.commit_carries_group_info(),
                &fx.group_info,
                fx.tree.as_deref(),
            );
        })
    });
    run("ext_process", &|st| {
        let (p, mut g) = fx.load(f, MEMBER_B, &fx.member);
        let pp = Prof::new(&p, st);
        timed(|| op_process_phased(&pp, st, &mut g, &fx.ext_commit))
    });
    run("ext_public", &|st| {
        let (p, mut pg) = fx.load_public(f);
        let crypto = ProfCrypto { inner: p.crypto(), stats: st };
        timed(|| op_public_process_phased(&crypto, st, p.storage(), &mut pg, &fx.ext_commit))
    });
    if let Some(gi) = fx.ext_group_info.as_deref() {
        run("ext_steward", &|st| {
            let (p, pg) = fx.load_public(f);
            let crypto = ProfCrypto { inner: p.crypto(), stats: st };
            timed(|| {
                op_steward_mirror(&crypto, p.storage(), &pg, &fx.ext_commit, gi);
            })
        });
    }
    run("tree_import", &|st| {
        let p = f.provider(JOINER, Values::new());
        let crypto = ProfCrypto { inner: p.crypto(), stats: st };
        timed(|| {
            op_tree_import(&crypto, p.storage(), &fx.group_info, fx.tree.as_deref());
        })
    });
}

fn mls(c: &mut Criterion) {
    // `MLS_SIZES=2,10` limits the run (a quick check); the default is every size.
    let sizes: Vec<usize> = match std::env::var("MLS_SIZES") {
        Ok(list) => list.split(',').map(|n| n.trim().parse().expect("MLS_SIZES: comma-separated sizes")).collect(),
        Err(_) => SIZES.to_vec(),
    };
    for n in sizes {
        let bare = build(&Bare, n);
        let nymstr = build(&Nymstr, n);
        bench_flavor(c, &Bare, n, &bare);
        bench_flavor(c, &Nymstr, n, &nymstr);
        bench_nymstr_extra(c, n, &nymstr);
        profile(&Bare, n, &bare);
        profile(&Nymstr, n, &nymstr);
    }
}

criterion_group!(benches, mls);
criterion_main!(benches);
