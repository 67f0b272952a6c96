//! Key-encryption keys sealed to a TPM 2.0.
//!
//! Each KEK is 32 random bytes sealed under the TPM's storage primary key (an ECC P-256 key the
//! TPM derives from its owner seed, so it is the same on every start and never leaves the chip).
//! Only the sealed blob is written to disk: it is useless on any other TPM, and with `--tpm-pcrs`
//! also on this TPM once the measured boot state changes. At start the plugin unseals the KEKs
//! into memory (over a salted, encrypted session, so the key does not cross the bus in the clear)
//! and from then on works like the key-file provider: same envelope format, same rotation.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, EccPoint, KeyedHashScheme, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SensitiveData, SymmetricDefinition,
    SymmetricDefinitionObject,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use super::envelope::Kek;
use super::local::LocalKeys;

const FILE_KIND: &str = "phylax-tpm-sealed-key";
/// Sealed key files are a few hundred bytes; refuse to read anything much larger.
const MAX_FILE: u64 = 64 * 1024;

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
    /// exist
    #[arg(long)]
    pub tpm_create_sealed_key: bool,

    /// When creating a sealed key, bind it to these SHA-256 PCRs (e.g. 7 for Secure Boot
    /// state): the TPM then unseals it only while they hold the values they have now
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = clap::value_parser!(u8).range(0..24))]
    pub tpm_pcrs: Vec<u8>,
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

/// On-disk form of a sealed KEK. The public and private parts are what TPM2_Create returned; the
/// private part is encrypted by the TPM under its storage key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SealedFile {
    pub kind: String,
    pub version: u32,
    /// SHA-256 PCRs the unseal policy requires (empty: no policy).
    pub pcrs: Vec<u8>,
    pub public: String,
    pub private: String,
}

impl SealedFile {
    /// Parses and checks a sealed key file's text; the error says what is wrong without quoting it.
    pub fn parse(text: &[u8]) -> Result<(SealedFile, Public, Private), String> {
        let file: SealedFile =
            serde_json::from_slice(text).map_err(|e| format!("is not a Phylax sealed key file ({e})"))?;
        if file.kind != FILE_KIND {
            return Err(format!(
                "is not a Phylax sealed key file (kind must be {FILE_KIND:?})"
            ));
        }
        if file.version != 1 {
            return Err(format!(
                "has format version {}, this plugin reads version 1",
                file.version
            ));
        }
        if let Some(p) = file.pcrs.iter().find(|p| **p >= 24) {
            return Err(format!("names PCR {p}; PCRs are 0..23"));
        }
        let public = B64
            .decode(&file.public)
            .ok()
            .and_then(|b| Public::unmarshall(&b).ok())
            .ok_or("has a public part that is not a base64 TPM2B_PUBLIC")?;
        let private = B64
            .decode(&file.private)
            .ok()
            .and_then(|b| Private::try_from(b).ok())
            .ok_or("has a private part that is not a base64 TPM2B_PRIVATE")?;
        Ok((file, public, private))
    }
}

/// Unseals every configured KEK, creating the first one if asked.
pub fn load(args: &TpmArgs) -> anyhow::Result<LocalKeys> {
    let Some(primary_file) = args.sealed_keys.first() else {
        anyhow::bail!("the tpm provider needs at least one --tpm-sealed-key");
    };
    let tcti = TctiNameConf::from_str(&args.tpm_tcti)
        .map_err(|e| anyhow::anyhow!("TCTI {:?}: {e}", args.tpm_tcti))?;
    let mut tpm = Tpm::open(tcti, &args.tpm_tcti)?;
    if args.tpm_create_sealed_key && !primary_file.exists() {
        tpm.create_sealed_key(primary_file, &args.tpm_pcrs)?;
        tracing::info!(path = %primary_file.display(), pcrs = ?args.tpm_pcrs, "sealed a new key-encryption key to the TPM");
    } else if !args.tpm_pcrs.is_empty() && !args.tpm_create_sealed_key {
        tracing::warn!("--tpm-pcrs only applies when a sealed key is created (--tpm-create-sealed-key)");
    }
    let mut keys = Vec::with_capacity(args.sealed_keys.len());
    for path in &args.sealed_keys {
        keys.push(tpm.unseal_file(path)?);
    }
    let sources: Vec<String> = args
        .sealed_keys
        .iter()
        .map(|f| format!("sealed key {}", f.display()))
        .collect();
    LocalKeys::new("tpm", keys, &sources)
}

struct Tpm {
    ctx: Context,
    /// The storage primary key, parent of every sealed object.
    primary: KeyHandle,
}

impl Tpm {
    fn open(tcti: TctiNameConf, shown: &str) -> anyhow::Result<Tpm> {
        let mut ctx = Context::new(tcti).map_err(|e| {
            anyhow::anyhow!(
                "cannot open the TPM at {shown}: {e}; check --tpm-tcti and that this user may use \
                 the device (usually the tss group)"
            )
        })?;
        let primary = ctx
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
            })?
            .key_handle;
        Ok(Tpm { ctx, primary })
    }

    /// A session salted with the primary key whose parameters are encrypted both ways, so the KEK
    /// crosses the bus to and from the TPM only in encrypted form.
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

    fn create_sealed_key(&mut self, path: &Path, pcrs: &[u8]) -> anyhow::Result<()> {
        let selection = pcr_selection(pcrs)?;
        let policy = match &selection {
            Some(sel) => self
                .trial_policy(sel.clone())
                .map_err(|e| anyhow::anyhow!("cannot compute the PCR policy: {e}"))?,
            None => Digest::default(),
        };
        let attributes = ObjectAttributesBuilder::new()
            .with_fixed_tpm(true)
            .with_fixed_parent(true)
            .with_no_da(true)
            // Without a PCR policy the (empty) auth value unseals; with one, only the policy.
            .with_user_with_auth(selection.is_none())
            .build()?;
        let template = PublicBuilder::new()
            .with_public_algorithm(PublicAlgorithm::KeyedHash)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(attributes)
            .with_auth_policy(policy)
            .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
            .with_keyed_hash_unique_identifier(Digest::default())
            .build()?;
        let kek = Zeroizing::new(rand::random::<[u8; 32]>().to_vec());
        let sensitive = SensitiveData::try_from(kek.to_vec())?;
        let session = self.encrypted_session(SessionType::Hmac)?;
        let primary = self.primary;
        let created = self
            .ctx
            .execute_with_session(Some(session), |ctx| {
                ctx.create(primary, template, None, Some(sensitive), None, None)
            })
            .map_err(|e| anyhow::anyhow!("the TPM refused to seal a new key: {e}"))?;
        let _ = self
            .ctx
            .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
        let file = SealedFile {
            kind: FILE_KIND.into(),
            version: 1,
            pcrs: pcrs.to_vec(),
            public: B64.encode(created.out_public.marshall()?),
            private: B64.encode(created.out_private.value()),
        };
        let text = serde_json::to_vec_pretty(&file)?;
        write_new_file(path, &text)
    }

    fn trial_policy(&mut self, selection: PcrSelectionList) -> tss_esapi::Result<Digest> {
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
            ctx.policy_get_digest(policy)
        });
        let _ = self
            .ctx
            .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
        digest
    }

    fn unseal_file(&mut self, path: &Path) -> anyhow::Result<Kek> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|e| {
            anyhow::anyhow!("cannot read sealed key {shown}: {e}; create one with --tpm-create-sealed-key")
        })?;
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
        let text = std::fs::read(path).map_err(|e| anyhow::anyhow!("cannot read sealed key {shown}: {e}"))?;
        let (file, public, private) =
            SealedFile::parse(&text).map_err(|why| anyhow::anyhow!("sealed key {shown} {why}"))?;
        let primary = self.primary;
        let loaded = self
            .ctx
            .execute_with_nullauth_session(|ctx| ctx.load(primary, private, public))
            .map_err(|e| {
                anyhow::anyhow!(
                    "the TPM refused to load sealed key {shown}: {e}; it was sealed by a different TPM \
                     (or the TPM was cleared)"
                )
            })?;
        let unsealed = if file.pcrs.is_empty() {
            let session = self.encrypted_session(SessionType::Hmac)?;
            let result = self
                .ctx
                .execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()));
            let _ = self
                .ctx
                .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
            result.map_err(|e| anyhow::anyhow!("the TPM refused to unseal {shown}: {e}"))?
        } else {
            let selection = pcr_selection(&file.pcrs)?.unwrap_or_default();
            let session = self.encrypted_session(SessionType::Policy)?;
            let policy = PolicySession::try_from(session)?;
            let result = self
                .ctx
                .execute_without_session(|ctx| ctx.policy_pcr(policy, Digest::default(), selection))
                .and_then(|()| {
                    self.ctx
                        .execute_with_session(Some(session), |ctx| ctx.unseal(loaded.into()))
                });
            let _ = self
                .ctx
                .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
            result.map_err(|e| {
                anyhow::anyhow!(
                    "the TPM refused to unseal {shown}: {e}; it is bound to PCRs {:?}, whose values \
                     have changed since it was sealed (boot chain, firmware or Secure Boot state): \
                     seal a new key on this boot and rotate to it",
                    file.pcrs
                )
            })?
        };
        let _ = self.ctx.flush_context(loaded.into());
        let bytes = unsealed.value();
        if bytes.len() != 32 {
            anyhow::bail!(
                "sealed key {shown} holds {} bytes; a 256-bit KEK (32 bytes) is required",
                bytes.len()
            );
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(bytes);
        Ok(Kek::from_bytes(&key))
    }
}

fn storage_primary_template() -> tss_esapi::Result<Public> {
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
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

fn pcr_selection(pcrs: &[u8]) -> anyhow::Result<Option<PcrSelectionList>> {
    if pcrs.is_empty() {
        return Ok(None);
    }
    let slots = pcrs
        .iter()
        .map(|p| {
            PcrSlot::try_from(1u32 << p)
                .map_err(|_| anyhow::anyhow!("PCR {p} does not exist; PCRs are 0..23"))
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
    fn sealed_files_are_checked_before_the_tpm_sees_them() {
        let err = |t: &str| SealedFile::parse(t.as_bytes()).unwrap_err();
        assert!(err("").contains("not a Phylax sealed key file"));
        assert!(
            err(r#"{"kind":"x","version":1,"pcrs":[],"public":"","private":""}"#).contains("kind must be")
        );
        assert!(
            err(r#"{"kind":"phylax-tpm-sealed-key","version":2,"pcrs":[],"public":"","private":""}"#)
                .contains("version 2")
        );
        assert!(
            err(r#"{"kind":"phylax-tpm-sealed-key","version":1,"pcrs":[30],"public":"","private":""}"#)
                .contains("PCR 30")
        );
        assert!(
            err(r#"{"kind":"phylax-tpm-sealed-key","version":1,"pcrs":[],"public":"!!","private":""}"#)
                .contains("public part")
        );
    }
}
