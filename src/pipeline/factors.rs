//! Second factors of stage 2: API key (constant-time), client certificate pin (mTLS, from
//! Envoy's peer certificate or a trusted `x-forwarded-client-cert`) and IP allowlist.

use super::*;

pub(super) fn second_factors(
    integ: &IntegrationEntry,
    facts: &RequestFacts,
    token: &VerifiedToken,
    settings: &PipelineSettings,
) -> Result<(), Denial> {
    let i = &integ.integration;
    if let Some(expected) = &integ.api_key_sha256 {
        let ok = facts
            .headers
            .get(&settings.api_key_header)
            .map(|k| {
                Sha256::digest(k.as_bytes())
                    .ct_eq(expected.as_slice())
                    .into()
            })
            .unwrap_or(false);
        if !ok {
            return Err(Denial::new(
                DenyCode::ApiKeyInvalid,
                "the integration requires its API key as a second factor",
            ));
        }
    }
    if integ.mtls_cert_sha256.is_some() || token.cnf_x5t_s256.is_some() {
        let presented = client_cert_sha256(facts, settings.trust_xfcc);
        let Some(presented) = presented else {
            return Err(Denial::new(
                DenyCode::ClientCertificateInvalid,
                "a client certificate is required",
            ));
        };
        if let Some(expected) = &integ.mtls_cert_sha256
            && !bool::from(presented.as_slice().ct_eq(expected.as_slice()))
        {
            return Err(Denial::new(
                DenyCode::ClientCertificateInvalid,
                "the client certificate is not the one bound to the integration",
            ));
        }
        if let Some(cnf) = &token.cnf_x5t_s256 {
            let thumb = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&presented);
            if !bool::from(thumb.as_bytes().ct_eq(cnf.as_bytes())) {
                return Err(Denial::new(
                    DenyCode::ClientCertificateInvalid,
                    "the client certificate does not match the token's `cnf.x5t#S256`",
                ));
            }
        }
    }
    if !i.ip_allowlist.is_empty() {
        let ok = facts
            .source_ip
            .is_some_and(|ip| i.ip_allowlist.iter().any(|n| n.contains(&ip)));
        if !ok {
            return Err(Denial::new(
                DenyCode::IpNotAllowed,
                "the source address is not in the integration's IP allowlist",
            ));
        }
    }
    Ok(())
}

/// SHA-256 of the client certificate's DER: from Envoy's peer certificate (URL-encoded PEM) or,
/// when trusted, from the XFCC header's `Hash` (hex) of its last element.
pub fn client_cert_sha256(facts: &RequestFacts, trust_xfcc: bool) -> Option<Vec<u8>> {
    if let Some(pem) = facts.peer_certificate.as_deref().filter(|p| !p.is_empty()) {
        let pem = percent_encoding::percent_decode_str(pem)
            .decode_utf8()
            .ok()?;
        let der = pem_to_der(&pem)?;
        return Some(Sha256::digest(&der).to_vec());
    }
    if trust_xfcc {
        let xfcc = facts.headers.get("x-forwarded-client-cert")?;
        let last = xfcc.rsplit(',').next()?;
        for kv in last.split(';') {
            if let Some((k, v)) = kv.split_once('=')
                && k.trim().eq_ignore_ascii_case("hash")
            {
                let h = hex::decode(v.trim().trim_matches('"')).ok()?;
                return (h.len() == 32).then_some(h);
            }
        }
    }
    None
}

/// Decodes the first `CERTIFICATE` block of a PEM text.
fn pem_to_der(pem: &str) -> Option<Vec<u8>> {
    let begin = "-----BEGIN CERTIFICATE-----";
    let end = "-----END CERTIFICATE-----";
    let start = pem.find(begin)? + begin.len();
    let stop = pem[start..].find(end)? + start;
    let b64: String = pem[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}
