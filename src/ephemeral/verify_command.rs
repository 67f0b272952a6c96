//! `phylax verify-certificate`: checks destruction certificates offline against the published
//! public keys, one certificate or a whole chain, and says exactly what is wrong.

use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;

use super::certificates::{Certificate, PublicKeys, verify_chain, verify_one};

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// The published public keys: the ConfigMap `phylax-certificate-keys` as JSON or YAML
    /// (`kubectl get configmap -n phylax-system phylax-certificate-keys -o json`), or a JSON
    /// object of key id to base64 public key
    #[arg(long, value_name = "FILE")]
    pub keys: PathBuf,

    /// Verify the chain too: every index from 0 present once, each certificate naming its
    /// predecessor's hash. Without it each certificate is checked on its own
    #[arg(long)]
    pub chain: bool,

    /// Certificates: one certificate, a DestructionCertificate object, a List of them
    /// (`kubectl get destructioncertificates -o json`) or a JSON array; `-` reads stdin
    #[arg(value_name = "FILE", default_value = "-")]
    pub input: PathBuf,
}

/// What to print: on success a summary for stdout, on failure every problem for stderr.
pub fn run(args: &VerifyArgs) -> Result<String, String> {
    let keys = std::fs::read_to_string(&args.keys)
        .map_err(|e| format!("cannot read the public keys {}: {e}", args.keys.display()))?;
    let keys = PublicKeys::parse(&keys).map_err(|e| e.to_string())?;
    let mut text = String::new();
    if args.input.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read stdin: {e}"))?;
    } else {
        text = std::fs::read_to_string(&args.input)
            .map_err(|e| format!("cannot read {}: {e}", args.input.display()))?;
    }
    let certs = parse_certificates(&text)?;
    check(&certs, &keys, args.chain)
}

/// The verdict on parsed certificates.
pub fn check(certs: &[Certificate], keys: &PublicKeys, chain: bool) -> Result<String, String> {
    if chain {
        let report = verify_chain(certs, keys);
        if report.problems.is_empty() {
            let last = certs.iter().map(Certificate::index).max().unwrap_or(0);
            return Ok(format!(
                "{} certificate(s) verified; the chain is intact from index 0 to {last}\n",
                certs.len()
            ));
        }
        return Err(report
            .problems
            .iter()
            .map(|p| format!("{p}\n"))
            .collect::<String>());
    }
    let problems: Vec<String> = certs
        .iter()
        .filter_map(|c| verify_one(c, keys).err())
        .map(|p| format!("{p}\n"))
        .collect();
    if problems.is_empty() {
        Ok(format!("{} certificate(s) verified\n", certs.len()))
    } else {
        Err(problems.concat())
    }
}

/// Accepts the forms `kubectl` and people produce; refuses anything else by name, and every
/// certificate member Phylax does not write (a field added after signing is not ignored).
pub fn parse_certificates(text: &str) -> Result<Vec<Certificate>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("the input is not JSON: {e}"))?;
    let items: Vec<Value> = match value {
        Value::Array(items) => items,
        Value::Object(ref o) if o.contains_key("items") => match o.get("items") {
            Some(Value::Array(items)) => items.clone(),
            _ => return Err("`items` is not a list".into()),
        },
        other => vec![other],
    };
    if items.is_empty() {
        return Err("no certificates in the input".into());
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            let name = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            let cert = match item {
                Value::Object(mut o) if o.contains_key("certificate") => {
                    o.remove("certificate").unwrap_or_default()
                }
                other => other,
            };
            serde_json::from_value(cert)
                .map_err(|e| format!("item {i}{name} is not a destruction certificate: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::certificates::SigningKey;
    use super::super::certificates::tests::chain;
    use super::*;
    use serde_json::json;

    #[test]
    fn kubectl_lists_and_bare_certificates_are_read_and_extra_fields_refused() {
        let key = SigningKey::generate().unwrap();
        let keys = PublicKeys::from_signing(&[&key]);
        let certs = chain(&key, 3);
        let list = json!({"apiVersion": "v1", "kind": "List", "items": certs.iter().enumerate().map(|(i, c)| json!({
            "apiVersion": "ephemeral.phylax.dev/v1alpha1", "kind": "DestructionCertificate",
            "metadata": {"name": format!("dc-{i}")}, "certificate": c})).collect::<Vec<_>>()});
        let parsed = parse_certificates(&list.to_string()).unwrap();
        assert_eq!(parsed, certs);
        assert!(
            check(&parsed, &keys, true)
                .unwrap()
                .contains("intact from index 0 to 2")
        );
        let one = parse_certificates(&serde_json::to_string(&certs[1]).unwrap()).unwrap();
        assert!(check(&one, &keys, false).is_ok());
        assert!(
            check(&one, &keys, true)
                .unwrap_err()
                .contains("starts at index 1")
        );

        let mut extra = serde_json::to_value(&certs[0]).unwrap();
        extra["destruction"]["note"] = json!("added later");
        let err = parse_certificates(&extra.to_string()).unwrap_err();
        assert!(err.contains("unknown field `note`"), "{err}");
        assert!(parse_certificates("[]").unwrap_err().contains("no certificates"));
        assert!(parse_certificates("{").unwrap_err().contains("not JSON"));
    }
}
