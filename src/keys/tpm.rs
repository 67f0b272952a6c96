//! Key-encryption keys sealed to a TPM 2.0.
//!
//! Each KEK is 32 random bytes sealed under the TPM's storage primary key (an ECC P-256 key the
//! TPM derives from its owner seed, so it is the same on every start and never leaves the chip).
//! Only the sealed blob is written to disk: it is useless on any other TPM. On this TPM it is
//! guarded by an auth value (`--tpm-auth-file`), a PCR policy (`--tpm-pcrs`: only while the
//! measured boot state is unchanged), or both; the plugin never seals a KEK that anyone holding
//! the file and the TPM could unseal with an empty auth value.
//!
//! At start the plugin unseals the KEKs into memory over a session salted with the storage
//! primary key and encrypted both ways, so the key does not cross the bus in the clear. That only
//! protects it if the primary is really the TPM's: whatever answers on the TCTI could return a key
//! of its own from CreatePrimary and read the salt. So the sealed key file pins the primary's
//! public area when the key is sealed, and every start compares it before a session is salted.
//! From then on the provider works like the key-file provider: same envelope format, same
//! rotation.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{ObjectAttributes, ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private,
    Public, PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinition, SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use super::envelope::Kek;
use super::local::LocalKeys;

const FILE_KIND: &str = "phylax-tpm-sealed-key";
/// The format written. Version 1 (before issue 14) pinned no primary key and, without PCRs,
/// sealed with an empty auth value; it is still read. Version 2 adds `authValue` and
/// `primaryPublic`.
const FILE_VERSION: u32 = 2;
/// Sealed key files are a few hundred bytes; refuse to read anything much larger.
const MAX_FILE: u64 = 64 * 1024;
/// An auth file holds 16 bytes to 4 KiB; the TPM is given its SHA-256 (its limit is 32 bytes).
const MIN_AUTH: usize = 16;
const MAX_AUTH: usize = 4096;

#[derive(Debug, clap::Args)]
#[command(next_help_heading = "TPM provider (--provider tpm)")]
pub struct TpmArgs {
    /// How to reach the TPM: device:/dev/tpmrm0 (the kernel's resource manager), or for tests
    /// swtpm:host=127.0.0.1,port=N / mssim:host=...,port=N
    #[arg(long, value_name = "TCTI", env = "PHYLAX_TPM_TCTI", default_value = "device:/dev/tpmrm0", value_parser = parse_tcti)]
    pub tpm_tcti: String,

    /// File holding a KEK sealed to the TPM (mode 0600). Repeat for rotation: the first
    /// encrypts, all decrypt
    #[arg(long = "tpm-sealed-key", value_name = "PATH")]
    pub sealed_keys: Vec<PathBuf>,

    /// Create the first --tpm-sealed-key with a new random KEK sealed to this TPM if it does not
    /// exist. Needs --tpm-auth-file, --tpm-pcrs or both
    #[arg(long)]
    pub tpm_create_sealed_key: bool,

    /// When creating a sealed key, bind it to these SHA-256 PCRs (e.g. 7 for Secure Boot
    /// state): the TPM then unseals it only while they hold the values they have now
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = clap::value_parser!(u8).range(0..24))]
    pub tpm_pcrs: Vec<u8>,

    /// File with a secret (16 bytes to 4 KiB, e.g. `head -c 32 /dev/urandom`; one trailing
    /// newline is ignored; no access for others) that a new sealed key needs to be unsealed.
    /// Keep it off the sealed key's disk (a systemd credential, a secret store's file). Read at
    /// every start for the keys sealed with it
    #[arg(long, value_name = "PATH")]
    pub tpm_auth_file: Option<PathBuf>,
}

/// Accepts the TCTI forms the TPM library understands, and refuses the rest explicitly: its own
/// parser would read an unknown `swtpm:` option as "the default port on localhost".
pub fn parse_tcti(s: &str) -> Result<String, String> {
    let (name, conf) = s.split_once(':').unwrap_or((s, ""));
    match name {
        "device" => {
            if !conf.is_empty() && !conf.starts_with('/') {
                return Err(format!(
                    "TCTI {s:?}: the device must be an absolute path, e.g. device:/dev/tpmrm0"
                ));
            }
        }
        "swtpm" | "mssim" => {
            for option in conf.split(',').filter(|o| !o.is_empty()) {
                match option.split_once('=') {
                    Some(("host", h)) if !h.is_empty() => {}
                    Some(("port", p)) if p.parse::<u16>().is_ok() => {}
                    Some(("path", _)) => {
                        return Err(format!(
                            "TCTI {s:?}: the {name} TCTI over a unix socket (path=) is not supported \
                             by this build's TPM library; start swtpm with --server type=tcp,port=N \
                             and use {name}:host=127.0.0.1,port=N"
                        ));
                    }
                    _ => {
                        return Err(format!(
                            "TCTI {s:?}: unknown or empty option {option:?}; {name} takes host=HOST,port=PORT"
                        ));
                    }
                }
            }
        }
        "tabrmd" => {}
        _ => {
            return Err(format!(
                "TCTI {s:?} is not one of device:PATH, swtpm:host=H,port=P, mssim:host=H,port=P, tabrmd"
            ));
        }
    }
    TctiNameConf::from_str(s).map_err(|e| format!("TCTI {s:?}: {e}"))?;
    Ok(s.to_owned())
}

/// On-disk form of a sealed key (JSON). `public` and `private` are what TPM2_Create returned (a
/// TPMT_PUBLIC and the bytes of a TPM2B_PRIVATE, base64); the private part is encrypted by the TPM
/// under its storage primary key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawFile {
    kind: String,
    version: u32,
    /// SHA-256 PCRs the unseal policy requires (empty: no PCR policy).
    pcrs: Vec<u8>,
    /// Version 2: whether unsealing also needs the secret from --tpm-auth-file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth_value: Option<bool>,
    /// Version 2: the storage primary key (TPMT_PUBLIC, base64) the key was sealed under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    primary_public: Option<String>,
    public: String,
    private: String,
}

/// A sealed key file, checked: what the TPM will be given and what unsealing needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedKey {
    pub version: u32,
    /// SHA-256 PCRs of the unseal policy (empty: none).
    pub pcrs: Vec<u8>,
    /// Unsealing needs the --tpm-auth-file secret.
    pub auth_value: bool,
    /// The storage primary key it was sealed under; None for version 1 (nothing pinned).
    pub primary: Option<Public>,
    pub public: Public,
    pub private: Private,
}

impl SealedKey {
    /// Parses and checks a sealed key file's text. The error says what is wrong without quoting
    /// the file, and reads on from the file's name ("sealed key PATH has ...").
    pub fn parse(text: &[u8]) -> Result<SealedKey, String> {
        if text.len() as u64 > MAX_FILE {
            return Err(format!(
                "is {} bytes; a sealed key file is under 64 KiB",
                text.len()
            ));
        }
        let raw: RawFile =
            serde_json::from_slice(text).map_err(|e| format!("is not a Phylax sealed key file ({e})"))?;
        if raw.kind != FILE_KIND {
            return Err(format!(
                "is not a Phylax sealed key file (kind must be {FILE_KIND:?})"
            ));
        }
        match (raw.version, raw.auth_value, raw.primary_public.is_some()) {
            (1, None, false) | (2, Some(_), true) => {}
            (1, ..) => {
                return Err(
                    "has format version 1 but fields of version 2 (authValue, primaryPublic): edited?".into(),
                );
            }
            (2, ..) => {
                return Err(
                    "has format version 2 but lacks authValue or primaryPublic: truncated or edited?".into(),
                );
            }
            (v, ..) => {
                return Err(format!(
                    "has format version {v}; this plugin reads versions 1 and 2 (written by a newer Phylax?)"
                ));
            }
        }
        if let Some(p) = raw.pcrs.iter().find(|p| **p >= 24) {
            return Err(format!("names PCR {p}; PCRs are 0..23"));
        }
        // Version 2 is written with each PCR once, in order; version 1 kept the flag's order.
        if raw.version >= 2 && !raw.pcrs.windows(2).all(|w| w[0] < w[1]) {
            return Err("lists PCRs out of order or twice: edited?".into());
        }
        let auth_value = raw.auth_value.unwrap_or(false);
        if raw.version >= 2 && raw.pcrs.is_empty() && !auth_value {
            return Err(
                "has neither PCRs nor an auth value, which no version 2 file is written with: edited?".into(),
            );
        }
        let public =
            decode_public(&raw.public).ok_or("has a public part that is not a base64 TPMT_PUBLIC")?;
        check_sealed_object(&public, &raw.pcrs)?;
        let private = B64
            .decode(&raw.private)
            .ok()
            .filter(|b| !b.is_empty())
            .and_then(|b| Private::try_from(b).ok())
            .ok_or("has a private part that is not a base64 TPM2B_PRIVATE")?;
        let primary = match &raw.primary_public {
            None => None,
            Some(text) => {
                let primary =
                    decode_public(text).ok_or("has a primaryPublic that is not a base64 TPMT_PUBLIC")?;
                if !is_storage_primary(&primary) {
                    return Err(
                        "has a primaryPublic that is not a storage primary key as Phylax creates it: edited?"
                            .into(),
                    );
                }
                Some(primary)
            }
        };
        Ok(SealedKey {
            version: raw.version,
            pcrs: raw.pcrs,
            auth_value,
            primary,
            public,
            private,
        })
    }

    /// The file's text, in the current format; only a key with its primary pinned is written.
    pub fn to_file(&self) -> anyhow::Result<Vec<u8>> {
        let Some(primary) = &self.primary else {
            anyhow::bail!("a sealed key is written only with its storage primary key pinned");
        };
        let raw = RawFile {
            kind: FILE_KIND.into(),
            version: FILE_VERSION,
            pcrs: self.pcrs.clone(),
            auth_value: Some(self.auth_value),
            primary_public: Some(B64.encode(primary.marshall()?)),
            public: B64.encode(self.public.marshall()?),
            private: B64.encode(self.private.value()),
        };
        Ok(serde_json::to_vec_pretty(&raw)?)
    }

    /// What to tell the operator about a version 1 file, and whether it is a warning: it pins no
    /// primary (harmless if another configured file does, as all keys share one primary) and,
    /// without PCRs, unseals with an empty auth value (only rotation fixes that).
    fn version_1_notice(&self, path: &Path, pinned_by: Option<&Path>) -> Option<(bool, String)> {
        if self.version != 1 {
            return None;
        }
        let empty_auth = self.pcrs.is_empty() && !self.auth_value;
        let mut text = format!(
            "sealed key {} is format version 1: it pins no TPM storage primary key",
            path.display()
        );
        if empty_auth {
            text.push_str(
                ", and it unseals with an empty auth value (anyone who can read it and use the TPM can unseal it)",
            );
        }
        match pinned_by {
            Some(p) => text.push_str(&format!(
                "; the storage primary key is checked through the pin in {}",
                p.display()
            )),
            None => text.push_str(
                "; nothing checks that the storage primary key is the TPM's own, so something between the \
                 plugin and the TPM could read the unsealed key",
            ),
        }
        let warn = empty_auth || pinned_by.is_none();
        if warn {
            text.push_str(
                ". Seal a new key with --tpm-auth-file and/or --tpm-pcrs, rotate to it (README: KMS plugin, \
                 rotation) and then remove this one",
            );
        }
        Some((warn, text))
    }
}

/// A base64 TPMT_PUBLIC, in its canonical encoding only (nothing trailing, nothing left over).
fn decode_public(text: &str) -> Option<Public> {
    let bytes = B64.decode(text).ok()?;
    let public = Public::unmarshall(&bytes).ok()?;
    (public.marshall().ok()? == bytes).then_some(public)
}

/// A sealed object must be what `sealed_object_template` makes for its PCRs: an edited or
/// mismatched public part is refused here, with a message, not later by the TPM.
fn check_sealed_object(public: &Public, pcrs: &[u8]) -> Result<(), String> {
    let Public::KeyedHash {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        ..
    } = public
    else {
        return Err("has a public part that is not a sealed data object: edited?".into());
    };
    let expected =
        sealed_object_attributes(pcrs.is_empty()).map_err(|e| format!("cannot be checked ({e})"))?;
    if *object_attributes != expected
        || *name_hashing_algorithm != HashingAlgorithm::Sha256
        || *parameters != PublicKeyedHashParameters::new(KeyedHashScheme::Null)
    {
        return Err("has a public part with other attributes than Phylax seals with: edited?".into());
    }
    // With PCRs only the policy (a SHA-256 digest) unseals; without, there is no policy.
    let policy_fits = if pcrs.is_empty() {
        auth_policy.is_empty()
    } else {
        auth_policy.len() == 32
    };
    if !policy_fits {
        return Err("has a public part whose policy does not fit its pcrs field: edited?".into());
    }
    Ok(())
}

/// Whether this is a storage primary key from `storage_primary_template`: the same template,
/// and a public point.
fn is_storage_primary(public: &Public) -> bool {
    let Public::Ecc {
        object_attributes,
        name_hashing_algorithm,
        auth_policy,
        parameters,
        unique,
    } = public
    else {
        return false;
    };
    let Ok(template) = storage_primary_template() else {
        return false;
    };
    let as_template = Public::Ecc {
        object_attributes: *object_attributes,
        name_hashing_algorithm: *name_hashing_algorithm,
        auth_policy: auth_policy.clone(),
        parameters: *parameters,
        unique: EccPoint::default(),
    };
    as_template == template && !unique.x().value().is_empty() && !unique.y().value().is_empty()
}

/// The TPM's name of a public area (nameAlg SHA-256, then the SHA-256 of the TPMT_PUBLIC), in hex
/// as `tpm2_readpublic` prints it.
fn name_hex(public: &Public) -> String {
    match public.marshall() {
        Ok(bytes) => {
            format!("000b{}", crate::runtime::hex::encode(&Sha256::digest(&bytes)))
        }
        Err(_) => "(no name)".into(),
    }
}

/// The auth value from --tpm-auth-file: the SHA-256 of the secret, so a secret of any length fits
/// the TPM's 32-byte limit. Zeroed when dropped; never printed.
pub struct AuthValue {
    digest: Zeroizing<[u8; 32]>,
    path: PathBuf,
}

impl std::fmt::Debug for AuthValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthValue")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AuthValue {
    /// Reads an auth file: a regular file nobody but its owner and group can access, of 16 bytes
    /// to 4 KiB. Every buffer that held the secret is zeroed.
    pub fn read(path: &Path) -> anyhow::Result<AuthValue> {
        let shown = path.display();
        let mut file =
            File::open(path).map_err(|e| anyhow::anyhow!("cannot read TPM auth file {shown}: {e}"))?;
        let meta = file
            .metadata()
            .map_err(|e| anyhow::anyhow!("cannot read TPM auth file {shown}: {e}"))?;
        if !meta.is_file() {
            anyhow::bail!("TPM auth file {shown} is not a regular file");
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            anyhow::bail!(
                "TPM auth file {shown} is accessible by others (mode {mode:04o}); run: chmod o-rwx {shown} \
                 (for a mounted volume, set its defaultMode to 0400 or 0440)"
            );
        }
        // A fixed buffer: a growing Vec would leave copies of the secret behind when it moves.
        let mut buf = Zeroizing::new([0u8; MAX_AUTH + 1]);
        let mut len = 0;
        while len < buf.len() {
            match file.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => anyhow::bail!("cannot read TPM auth file {shown}: {e}"),
            }
        }
        if len > MAX_AUTH {
            anyhow::bail!("TPM auth file {shown} is larger than 4 KiB; an auth secret is 16 bytes to 4 KiB");
        }
        AuthValue::from_secret(&buf[..len], path)
            .map_err(|why| anyhow::anyhow!("TPM auth file {shown} {why}"))
    }

    /// From the file's bytes: one trailing newline (`\n` or `\r\n`) is not part of the secret, so
    /// `echo` and `head -c` files both work.
    fn from_secret(secret: &[u8], path: &Path) -> Result<AuthValue, String> {
        let secret = match secret.strip_suffix(b"\n") {
            Some(s) => s.strip_suffix(b"\r").unwrap_or(s),
            None => secret,
        };
        if secret.len() < MIN_AUTH {
            return Err(format!(
                "holds {} bytes; an auth secret needs at least {MIN_AUTH} (e.g. head -c 32 /dev/urandom > FILE)",
                secret.len()
            ));
        }
        let mut digest = Zeroizing::new([0u8; 32]);
        let mut hasher = Sha256::new();
        hasher.update(secret);
        hasher.finalize_into(GenericArray::from_mut_slice(&mut digest[..]));
        Ok(AuthValue {
            digest,
            path: path.to_owned(),
        })
    }

    /// The TPM's form (its buffer is zeroed on drop as well).
    fn tpm(&self) -> tss_esapi::Result<Auth> {
        Auth::try_from(&self.digest[..])
    }
}

/// Reads and checks a sealed key file before the TPM is given any of it.
fn read_sealed_file(path: &Path) -> anyhow::Result<SealedKey> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| {
        anyhow::anyhow!("cannot read sealed key {shown}: {e}; create one with --tpm-create-sealed-key")
    })?;
    let meta = file
        .metadata()
        .map_err(|e| anyhow::anyhow!("cannot read sealed key {shown}: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "sealed key {shown} is accessible by group or others (mode {mode:04o}); run: chmod 600 {shown}"
        );
    }
    if meta.len() > MAX_FILE {
        anyhow::bail!(
            "sealed key {shown} is {} bytes; a sealed key file is under 64 KiB",
            meta.len()
        );
    }
    let mut text = Vec::new();
    file.take(MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| anyhow::anyhow!("cannot read sealed key {shown}: {e}"))?;
    SealedKey::parse(&text).map_err(|why| anyhow::anyhow!("sealed key {shown} {why}"))
}

/// Unseals every configured KEK, creating the first one if asked.
pub fn load(args: &TpmArgs) -> anyhow::Result<LocalKeys> {
    let Some(first) = args.sealed_keys.first() else {
        anyhow::bail!("the tpm provider needs at least one --tpm-sealed-key");
    };
    let create = args.tpm_create_sealed_key && !first.exists();
    // Refused before the TPM is opened: nothing is sealed and nothing is written.
    if create && args.tpm_pcrs.is_empty() && args.tpm_auth_file.is_none() {
        anyhow::bail!(
            "refusing to seal a new key-encryption key in {} that anyone able to read that file and use the \
             TPM could unseal (an empty auth value): give --tpm-auth-file PATH (a random secret kept off \
             that disk, e.g. head -c 32 /dev/urandom > PATH), --tpm-pcrs LIST (e.g. 7, the Secure Boot \
             state), or both",
            first.display()
        );
    }
    if !args.tpm_pcrs.is_empty() && !args.tpm_create_sealed_key {
        tracing::warn!("--tpm-pcrs only applies when a sealed key is created (--tpm-create-sealed-key)");
    }

    // Everything the TPM will be given is read and checked before it is opened.
    let auth = args.tpm_auth_file.as_deref().map(AuthValue::read).transpose()?;
    let existing_paths = if create {
        &args.sealed_keys[1..]
    } else {
        &args.sealed_keys[..]
    };
    let existing = existing_paths
        .iter()
        .map(|path| Ok((path.as_path(), read_sealed_file(path)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for (path, key) in &existing {
        if key.auth_value && auth.is_none() {
            anyhow::bail!(
                "sealed key {} was sealed with an auth value: give --tpm-auth-file with the secret it was sealed with",
                path.display()
            );
        }
    }

    let tcti = TctiNameConf::from_str(&args.tpm_tcti)
        .map_err(|e| anyhow::anyhow!("TCTI {:?}: {e}", args.tpm_tcti))?;
    let mut tpm = Tpm::open(tcti, &args.tpm_tcti)?;
    // Before any session is salted with the primary (creating a key included), it must be the
    // one the existing keys were sealed under.
    let mut pinned_by = None;
    for (path, key) in &existing {
        if let Some(pinned) = &key.primary {
            tpm.check_pin(path, pinned)?;
            pinned_by.get_or_insert(*path);
        }
    }
    let mut keys = Vec::with_capacity(args.sealed_keys.len());
    if create {
        let key = tpm.create_sealed_key(first, &args.tpm_pcrs, auth.as_ref())?;
        tracing::info!(
            path = %first.display(),
            pcrs = ?key.pcrs,
            auth_value = key.auth_value,
            primary = %name_hex(&tpm.primary_public),
            "sealed a new key-encryption key to the TPM and pinned its storage primary key"
        );
        pinned_by.get_or_insert(first.as_path());
        keys.push((first.as_path(), key));
    } else if let Some(path) = pinned_by {
        tracing::info!(
            pinned_in = %path.display(),
            primary = %name_hex(&tpm.primary_public),
            "the TPM's storage primary key is the pinned one"
        );
    }
    keys.extend(existing);
    for (path, key) in &keys {
        match key.version_1_notice(path, pinned_by) {
            Some((true, text)) => tracing::warn!(path = %path.display(), "{text}"),
            Some((false, text)) => tracing::info!(path = %path.display(), "{text}"),
            None => {}
        }
        // Adding --tpm-auth-file later does not protect a key sealed without it.
        if auth.is_some() && !key.auth_value {
            tracing::info!(
                path = %path.display(),
                "sealed key {} was sealed without an auth value: --tpm-auth-file does not apply to it",
                path.display()
            );
        }
    }

    let mut keks = Vec::with_capacity(keys.len());
    for (path, key) in &keys {
        keks.push(tpm.unseal(path, key, auth.as_ref())?);
    }
    let sources: Vec<String> = args
        .sealed_keys
        .iter()
        .map(|f| format!("sealed key {}", f.display()))
        .collect();
    LocalKeys::new("tpm", keks, &sources)
}

struct Tpm {
    ctx: Context,
    /// The TCTI as configured, for messages.
    tcti: String,
    /// The storage primary key, parent of every sealed object.
    primary: KeyHandle,
    /// Its public area as the TPM returned it: what session salts are encrypted to.
    primary_public: Public,
}

impl Tpm {
    fn open(tcti: TctiNameConf, shown: &str) -> anyhow::Result<Tpm> {
        let mut ctx = Context::new(tcti).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the TPM at {shown}: {e}; check --tpm-tcti and that this user may use \
                 the device (usually the tss group)"
            )
        })?;
        let created = ctx
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(
                    Hierarchy::Owner,
                    storage_primary_template()?,
                    None,
                    None,
                    None,
                    None,
                )
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "the TPM refused to create the storage primary key: {e}; if the owner hierarchy \
                     has a password, this provider cannot use it yet"
                )
            })?;
        // Whatever answered must at least have made the kind of key asked for.
        if !is_storage_primary(&created.out_public) {
            anyhow::bail!(
                "the TPM at {shown} answered CreatePrimary with a key that is not the storage primary key asked \
                 for; refusing to encrypt anything to it (check --tpm-tcti and what serves it)"
            );
        }
        Ok(Tpm {
            ctx,
            tcti: shown.to_owned(),
            primary: created.key_handle,
            primary_public: created.out_public,
        })
    }

    /// Compares the storage primary key the TPM gives now with the one a key was sealed under.
    fn check_pin(&self, path: &Path, pinned: &Public) -> anyhow::Result<()> {
        if *pinned == self.primary_public {
            return Ok(());
        }
        // Both passed is_storage_primary: the template is the same, the public key is not.
        anyhow::bail!(
            "sealed key {} was sealed under TPM storage primary key {}, but the TPM at {} now gives {} (a \
             different public key): this is another TPM, a TPM whose owner hierarchy was cleared (TPM2_Clear \
             makes a new owner seed), or something between the plugin and the TPM answering with a key of its \
             own to read the session salt. Nothing was sent under that key. If the TPM was replaced or cleared, \
             this sealed key cannot be unsealed any more: remove it from --tpm-sealed-key (what only it \
             encrypted is lost on this node) and seal a new one; if not, investigate the path to the TPM \
             before starting the plugin",
            path.display(),
            name_hex(pinned),
            self.tcti,
            name_hex(&self.primary_public)
        )
    }

    /// A session salted with the primary key whose parameters are encrypted both ways, so the KEK
    /// and the auth value cross the bus to and from the TPM only in encrypted form.
    fn encrypted_session(&mut self, kind: SessionType) -> tss_esapi::Result<AuthSession> {
        let session = self
            .ctx
            .start_auth_session(
                Some(self.primary),
                None,
                None,
                kind,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )?
            .ok_or(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))?;
        let (attributes, mask) = SessionAttributesBuilder::new()
            .with_decrypt(true)
            .with_encrypt(true)
            .with_continue_session(true)
            .build();
        self.ctx.tr_sess_set_attributes(session, attributes, mask)?;
        Ok(session)
    }

    fn flush_session(&mut self, session: AuthSession) {
        let _ = self
            .ctx
            .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
    }

    fn create_sealed_key(
        &mut self,
        path: &Path,
        pcrs: &[u8],
        auth: Option<&AuthValue>,
    ) -> anyhow::Result<SealedKey> {
        let mut pcrs = pcrs.to_vec();
        pcrs.sort_unstable();
        pcrs.dedup();
        let selection = pcr_selection(&pcrs)?;
        let policy = match &selection {
            Some(sel) => self
                .trial_policy(sel.clone(), auth.is_some())
                .map_err(|e| anyhow::anyhow!("cannot compute the PCR policy: {e}"))?,
            None => Digest::default(),
        };
        let template = sealed_object_template(policy, selection.is_none())?;
        let kek = Zeroizing::new(rand::random::<[u8; 32]>());
        let sensitive = SensitiveData::try_from(&kek[..])?;
        let auth_value = auth.map(AuthValue::tpm).transpose()?;
        let session = self.encrypted_session(SessionType::Hmac)?;
        let primary = self.primary;
        let created = self.ctx.execute_with_session(Some(session), |ctx| {
            ctx.create(primary, template, auth_value, Some(sensitive), None, None)
        });
        self.flush_session(session);
        let created = created.map_err(|e| anyhow::anyhow!("the TPM refused to seal a new key: {e}"))?;
        let key = SealedKey {
            version: FILE_VERSION,
            pcrs,
            auth_value: auth.is_some(),
            primary: Some(self.primary_public.clone()),
            public: created.out_public,
            private: created.out_private,
        };
        let text = key.to_file()?;
        // Never write a file that the next start would refuse.
        SealedKey::parse(&text)
            .map_err(|why| anyhow::anyhow!("the TPM sealed a key whose file {why}; nothing was written"))?;
        write_new_file(path, &text)?;
        Ok(key)
    }

    /// The policy digest of PCRs at their current values (and the auth value, if there is one).
    fn trial_policy(&mut self, selection: PcrSelectionList, with_auth: bool) -> tss_esapi::Result<Digest> {
        let session = self
            .ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Trial,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )?
            .ok_or(tss_esapi::Error::WrapperError(
                tss_esapi::WrapperErrorKind::WrongValueFromTpm,
            ))?;
        let policy = PolicySession::try_from(session)?;
        let digest = self.ctx.execute_without_session(|ctx| {
            // An empty digest makes the TPM use the PCRs' current values.
            ctx.policy_pcr(policy, Digest::default(), selection)?;
            if with_auth {
                ctx.policy_auth_value(policy)?;
            }
            ctx.policy_get_digest(policy)
        });
        self.flush_session(session);
        digest
    }

    fn unseal(&mut self, path: &Path, key: &SealedKey, auth: Option<&AuthValue>) -> anyhow::Result<Kek> {
        let shown = path.display();
        let auth = match (key.auth_value, auth) {
            (true, Some(auth)) => Some(auth),
            (true, None) => anyhow::bail!(
                "sealed key {shown} was sealed with an auth value: give --tpm-auth-file with the secret it was sealed with"
            ),
            (false, _) => None,
        };
        let selection = pcr_selection(&key.pcrs)?;
        let primary = self.primary;
        let loaded = self
            .ctx
            .execute_with_nullauth_session(|ctx| ctx.load(primary, key.private.clone(), key.public.clone()))
            .map_err(|e| {
                anyhow::anyhow!(
                    "the TPM refused to load sealed key {shown}: {e}; it was sealed by a different TPM \
                     (or the TPM was cleared)"
                )
            })?;
        let result = self.unseal_loaded(loaded, selection, auth);
        if auth.is_some() {
            // The ESAPI keeps its own copy of the auth value with the handle: overwrite it.
            let _ = self.ctx.tr_set_auth(loaded.into(), Auth::default());
        }
        let _ = self.ctx.flush_context(loaded.into());
        let unsealed = result.map_err(|e| unseal_error(e, &shown.to_string(), key, auth))?;
        let bytes = unsealed.value();
        if bytes.len() != 32 {
            anyhow::bail!(
                "sealed key {shown} holds {} bytes; a 256-bit KEK (32 bytes) is required",
                bytes.len()
            );
        }
        let mut kek = Zeroizing::new([0u8; 32]);
        kek.copy_from_slice(bytes);
        Ok(Kek::from_bytes(&kek))
    }

    fn unseal_loaded(
        &mut self,
        loaded: KeyHandle,
        selection: Option<PcrSelectionList>,
        auth: Option<&AuthValue>,
    ) -> tss_esapi::Result<SensitiveData> {
        if let Some(auth) = auth {
            self.ctx.tr_set_auth(loaded.into(), auth.tpm()?)?;
        }
        let Some(selection) = selection else {
            // No policy: the object's auth value (empty only in version 1 files) authorizes.
            let session = self.encrypted_session(SessionType::Hmac)?;
            let result = self
                .ctx
                .execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()));
            self.flush_session(session);
            return result;
        };
        let session = self.encrypted_session(SessionType::Policy)?;
        let result = PolicySession::try_from(session).and_then(|policy| {
            self.ctx.execute_without_session(|ctx| {
                ctx.policy_pcr(policy, Digest::default(), selection)?;
                if auth.is_some() {
                    // The session's HMAC then proves the auth value, which never crosses the bus.
                    ctx.policy_auth_value(policy)?;
                }
                Ok(())
            })?;
            self.ctx
                .execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()))
        });
        self.flush_session(session);
        result
    }
}

/// Says why the TPM refused to unseal, in the terms of what to fix.
fn unseal_error(
    e: tss_esapi::Error,
    shown: &str,
    key: &SealedKey,
    auth: Option<&AuthValue>,
) -> anyhow::Error {
    let kind = match &e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    };
    match (kind, auth) {
        (Some(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail), Some(auth)) => {
            anyhow::anyhow!(
                "the TPM refused to unseal {shown}: the secret in --tpm-auth-file {} is not the one it was sealed \
             with ({e}); give the auth file it was sealed with",
                auth.path.display()
            )
        }
        (Some(Tss2ResponseCodeKind::PolicyFail), _) if !key.pcrs.is_empty() => anyhow::anyhow!(
            "the TPM refused to unseal {shown}: {e}; it is bound to PCRs {:?}, whose values have changed \
             since it was sealed (boot chain, firmware or Secure Boot state): seal a new key on this boot \
             and rotate to it",
            key.pcrs
        ),
        _ => anyhow::anyhow!("the TPM refused to unseal {shown}: {e}"),
    }
}

fn storage_primary_template() -> tss_esapi::Result<Public> {
    storage_primary_public(EccPoint::default())
}

/// The storage primary key's public area: the template with `unique` empty, or as the TPM made
/// it, with its public point.
fn storage_primary_public(unique: EccPoint) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(unique)
        .build()
}

/// Without a PCR policy the auth value unseals (`user_with_auth`); with one, only the policy.
/// `no_da`: the auth value is a random secret, not a guessable password, and a restart loop with
/// the wrong file must not lock every user of the TPM out through dictionary-attack lockout.
fn sealed_object_attributes(user_with_auth: bool) -> tss_esapi::Result<ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_no_da(true)
        .with_user_with_auth(user_with_auth)
        .build()
}

fn sealed_object_template(policy: Digest, user_with_auth: bool) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(sealed_object_attributes(user_with_auth)?)
        .with_auth_policy(policy)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

fn pcr_selection(pcrs: &[u8]) -> anyhow::Result<Option<PcrSelectionList>> {
    if pcrs.is_empty() {
        return Ok(None);
    }
    let slots = pcrs
        .iter()
        .map(|p| {
            (*p < 24)
                .then(|| PcrSlot::try_from(1u32 << p).ok())
                .flatten()
                .ok_or_else(|| anyhow::anyhow!("PCR {p} does not exist; PCRs are 0..23"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Some(
        PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &slots)
            .build()?,
    ))
}

/// Writes a new 0600 file without ever exposing a partial one or replacing an existing one: write
/// a temporary file, sync it, then hard-link it into place (which fails if the name is taken).
fn write_new_file(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("sealed-key"),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::hard_link(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| anyhow::anyhow!("cannot write sealed key {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tss_esapi::structures::EccParameter;

    fn primary(seed: u8) -> Public {
        let x = EccParameter::try_from(vec![seed; 32]).unwrap();
        let y = EccParameter::try_from(vec![seed ^ 0x55; 32]).unwrap();
        storage_primary_public(EccPoint::new(x, y)).unwrap()
    }

    /// A key as create_sealed_key makes it (the TPM's unique and private parts stood in for).
    fn key(pcrs: &[u8], auth_value: bool) -> SealedKey {
        let policy = if pcrs.is_empty() {
            Digest::default()
        } else {
            Digest::try_from(vec![9u8; 32]).unwrap()
        };
        SealedKey {
            version: FILE_VERSION,
            pcrs: pcrs.to_vec(),
            auth_value,
            primary: Some(primary(1)),
            public: sealed_object_template(policy, pcrs.is_empty()).unwrap(),
            private: Private::try_from(vec![3u8; 120]).unwrap(),
        }
    }

    fn json(key: &SealedKey) -> serde_json::Value {
        serde_json::from_slice(&key.to_file().unwrap()).unwrap()
    }

    fn parse_json(v: &serde_json::Value) -> Result<SealedKey, String> {
        SealedKey::parse(&serde_json::to_vec(v).unwrap())
    }

    /// What Phylax wrote before version 2: the same fields without authValue and primaryPublic.
    fn as_version_1(mut v: serde_json::Value) -> serde_json::Value {
        v["version"] = 1.into();
        let fields = v.as_object_mut().unwrap();
        fields.remove("authValue");
        fields.remove("primaryPublic");
        v
    }

    #[test]
    fn tcti_forms() {
        assert!(parse_tcti("device:/dev/tpmrm0").is_ok());
        assert!(parse_tcti("swtpm:host=127.0.0.1,port=2321").is_ok());
        assert!(parse_tcti("swtpm:path=/tmp/s").unwrap_err().contains("type=tcp"));
        assert!(parse_tcti("swtpm:prot=1").unwrap_err().contains("unknown"));
        assert!(parse_tcti("swtpm:port=99999").unwrap_err().contains("unknown"));
        assert!(parse_tcti("device:dev/tpm0").unwrap_err().contains("absolute"));
        assert!(parse_tcti("tpm0").unwrap_err().contains("not one of"));
    }

    #[test]
    fn sealed_key_files_round_trip_with_the_pinned_primary() {
        for (pcrs, auth) in [(&[][..], true), (&[7u8][..], false), (&[0, 7, 16][..], true)] {
            let k = key(pcrs, auth);
            let text = k.to_file().unwrap();
            assert_eq!(SealedKey::parse(&text).unwrap(), k);
            let v: serde_json::Value = serde_json::from_slice(&text).unwrap();
            assert_eq!(v["kind"], FILE_KIND);
            assert_eq!(v["version"], 2);
            assert_eq!(v["authValue"], auth);
            let pinned = B64.decode(v["primaryPublic"].as_str().unwrap()).unwrap();
            assert_eq!(pinned, primary(1).marshall().unwrap());
        }
        // A key is never written without its primary pinned.
        let mut k = key(&[7], false);
        k.primary = None;
        assert!(k.to_file().unwrap_err().to_string().contains("pinned"));
        // Names as tpm2_readpublic prints them, and different keys have different names.
        let name = name_hex(&primary(1));
        assert_eq!(name.len(), 68);
        assert!(name.starts_with("000b"));
        assert_ne!(name, name_hex(&primary(2)));
    }

    #[test]
    fn version_1_files_are_read_and_flagged() {
        let path = Path::new("/etc/phylax/old.sealed");
        let new = Path::new("/etc/phylax/new.sealed");
        // PCR-bound, and in the flag's order (version 1 did not sort them).
        let k = parse_json(&as_version_1(json(&key(&[16, 7], false)))).unwrap();
        assert_eq!((k.version, k.auth_value, k.primary.is_none()), (1, false, true));
        assert_eq!(k.pcrs, [16, 7]);
        let (warn, text) = k.version_1_notice(path, None).unwrap();
        assert!(warn, "{text}");
        assert!(
            text.contains("format version 1") && text.contains("nothing checks"),
            "{text}"
        );
        assert!(text.contains("rotate") && !text.contains("empty auth"), "{text}");
        // Another configured key's pin checks the primary that every key shares.
        let (warn, text) = k.version_1_notice(path, Some(new)).unwrap();
        assert!(!warn, "{text}");
        assert!(
            text.contains("checked through the pin in /etc/phylax/new.sealed"),
            "{text}"
        );

        // Without PCRs a version 1 key unseals with an empty auth value: a warning, pin or not.
        let k = parse_json(&as_version_1(json(&key(&[], true)))).unwrap();
        assert!(!k.auth_value);
        let (warn, text) = k.version_1_notice(path, Some(new)).unwrap();
        assert!(warn, "{text}");
        assert!(
            text.contains("empty auth value") && text.contains("--tpm-auth-file"),
            "{text}"
        );

        assert!(key(&[7], false).version_1_notice(path, None).is_none());
    }

    #[test]
    fn corrupted_sealed_key_files_are_refused_with_what_is_wrong() {
        let good = json(&key(&[7], true));
        let sealed_public = good["public"].clone();
        let primary_public = good["primaryPublic"].clone();
        let refused = |edit: &dyn Fn(&mut serde_json::Value), expected: &str| {
            let mut v = good.clone();
            edit(&mut v);
            let err = parse_json(&v).unwrap_err();
            assert!(err.contains(expected), "{v}: {err}");
        };
        refused(&|v| v["kind"] = "x".into(), "kind must be");
        refused(&|v| v["version"] = 3.into(), "format version 3");
        refused(&|v| v["version"] = 1.into(), "fields of version 2");
        refused(&|v| v["version"] = (-1).into(), "not a Phylax sealed key file");
        refused(
            &|v| {
                v.as_object_mut().unwrap().remove("primaryPublic");
            },
            "lacks",
        );
        refused(&|v| v["authValue"] = serde_json::Value::Null, "lacks");
        refused(&|v| v["authValue"] = "yes".into(), "not a Phylax sealed key file");
        refused(&|v| v["note"] = "hi".into(), "unknown field");
        refused(&|v| v["pcrs"] = serde_json::json!([30]), "PCR 30");
        refused(
            &|v| v["pcrs"] = serde_json::json!([300]),
            "not a Phylax sealed key file",
        );
        refused(
            &|v| v["pcrs"] = serde_json::json!([7, 7]),
            "out of order or twice",
        );
        refused(
            &|v| v["pcrs"] = serde_json::json!([16, 7]),
            "out of order or twice",
        );
        refused(
            &|v| {
                v["pcrs"] = serde_json::json!([]);
                v["authValue"] = false.into();
            },
            "neither PCRs nor an auth value",
        );
        refused(&|v| v["public"] = "!!".into(), "public part");
        refused(&|v| v["public"] = "".into(), "public part");
        let mut trailing = B64.decode(sealed_public.as_str().unwrap()).unwrap();
        trailing.push(0);
        refused(&|v| v["public"] = B64.encode(&trailing).into(), "public part");
        refused(
            &|v| v["public"] = primary_public.clone(),
            "not a sealed data object",
        );
        // The object says "no policy, the auth value unseals" while the file lists PCRs.
        refused(
            &|v| v["public"] = B64.encode(key(&[], true).public.marshall().unwrap()).into(),
            "other attributes",
        );
        let wrong_policy = sealed_object_template(Digest::try_from(vec![1u8; 20]).unwrap(), false).unwrap();
        refused(
            &|v| v["public"] = B64.encode(wrong_policy.marshall().unwrap()).into(),
            "policy does not fit",
        );
        refused(&|v| v["private"] = "".into(), "private part");
        refused(&|v| v["private"] = "!!".into(), "private part");
        refused(
            &|v| v["private"] = B64.encode(vec![0u8; 2000]).into(),
            "private part",
        );
        refused(&|v| v["primaryPublic"] = sealed_public.clone(), "primaryPublic");
        refused(&|v| v["primaryPublic"] = "AA==".into(), "primaryPublic");
        let template = storage_primary_template().unwrap();
        refused(
            &|v| v["primaryPublic"] = B64.encode(template.marshall().unwrap()).into(),
            "not a storage primary key",
        );

        // Not JSON of this shape at all.
        for text in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            b"\xff\xfe",
            b"{\"kind\":\"phylax-tpm-sealed-key\"}",
        ] {
            assert!(
                SealedKey::parse(text)
                    .unwrap_err()
                    .contains("not a Phylax sealed key file")
            );
        }
        let text = String::from_utf8(key(&[7], true).to_file().unwrap()).unwrap();
        let twice = text.replacen("\"version\": 2,", "\"version\": 2, \"version\": 2,", 1);
        assert!(
            SealedKey::parse(twice.as_bytes())
                .unwrap_err()
                .contains("duplicate field")
        );
    }

    #[test]
    fn truncated_oversized_and_mangled_files_never_panic() {
        let text = key(&[0, 7], true).to_file().unwrap();
        for n in 0..text.len() {
            assert!(
                SealedKey::parse(&text[..n]).is_err(),
                "a {n}-byte prefix was accepted"
            );
        }
        let mut big = text.clone();
        big.resize(MAX_FILE as usize + 1, b' ');
        assert!(SealedKey::parse(&big).unwrap_err().contains("under 64 KiB"));
        // Every single-bit flip: refused or (inside base64) parsed into something the TPM checks,
        // never a panic.
        for i in 0..text.len() {
            for bit in 0..8 {
                let mut t = text.clone();
                t[i] ^= 1 << bit;
                let _ = SealedKey::parse(&t);
            }
        }
        // Base64 of garbage in every binary field.
        let good = json(&key(&[0, 7], true));
        for len in [1usize, 2, 10, 100, 400] {
            for field in ["public", "private", "primaryPublic"] {
                let mut v = good.clone();
                let garbage: Vec<u8> = (0..len).map(|_| rand::random()).collect();
                v[field] = B64.encode(garbage).into();
                let _ = parse_json(&v);
            }
        }
    }

    #[test]
    fn auth_secrets_are_hashed_and_never_shown() {
        let p = Path::new("/run/credentials/tpm-auth");
        let a = AuthValue::from_secret(b"0123456789abcdef", p).unwrap();
        // The TPM gets the SHA-256 of the secret (reproducible with tpm2-tools for recovery).
        assert_eq!(a.digest[..], Sha256::digest(b"0123456789abcdef")[..]);
        for with_newline in [&b"0123456789abcdef\n"[..], b"0123456789abcdef\r\n"] {
            assert_eq!(
                *AuthValue::from_secret(with_newline, p).unwrap().digest,
                *a.digest
            );
        }
        let other = AuthValue::from_secret(b"0123456789abcdeg", p).unwrap();
        assert_ne!(*other.digest, *a.digest);
        // Only one newline is dropped.
        let two = AuthValue::from_secret(b"0123456789abcdef\n\n", p).unwrap();
        assert_ne!(*two.digest, *a.digest);
        assert!(
            AuthValue::from_secret(b"too short\n", p)
                .unwrap_err()
                .contains("at least 16")
        );
        assert!(
            AuthValue::from_secret(b"", p)
                .unwrap_err()
                .contains("holds 0 bytes")
        );
        let shown = format!("{a:?}");
        assert_eq!(shown, "AuthValue { path: \"/run/credentials/tpm-auth\", .. }");
    }

    #[test]
    fn auth_files_are_read_with_care() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tpm-auth");
        let write = |bytes: &[u8], mode: u32| {
            std::fs::write(&path, bytes).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        };
        write(&[7u8; 32], 0o600);
        let a = AuthValue::read(&path).unwrap();
        assert_eq!(a.digest[..], Sha256::digest([7u8; 32])[..]);
        write(&[7u8; 32], 0o440);
        assert!(AuthValue::read(&path).is_ok());
        write(&[7u8; 32], 0o644);
        let err = AuthValue::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("accessible by others") && err.contains("chmod o-rwx"),
            "{err}"
        );
        write(&[7u8; MAX_AUTH], 0o600);
        assert!(AuthValue::read(&path).is_ok());
        write(&[7u8; MAX_AUTH + 1], 0o600);
        let err = AuthValue::read(&path).unwrap_err().to_string();
        assert!(err.contains("larger than 4 KiB"), "{err}");
        write(b"short", 0o600);
        let err = AuthValue::read(&path).unwrap_err().to_string();
        assert!(err.contains("tpm-auth holds 5 bytes"), "{err}");
        let err = AuthValue::read(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let err = AuthValue::read(&dir.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read TPM auth file"), "{err}");
    }
}
