//! The SSRF guard of outbound webhook calls (INT-5.1-1, EXT-4.3-1): which destinations a
//! webhook may reach, checked after DNS resolution, and the resolver that pins a connection to
//! the checked addresses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// Why a destination is refused (`error_class` `destination_refused` in the attempt log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not `https` (nor `http` to loopback with the development flag).
    #[error("webhooks are delivered over https only")]
    Scheme,
    /// No host, or user info in the URL.
    #[error("the webhook URL has no host or carries credentials")]
    Url,
    /// The host resolved to no address, or did not resolve.
    #[error("the webhook host did not resolve")]
    Unresolved,
    /// An address in a refused range (private, loopback, link-local, CGNAT, multicast,
    /// unspecified, cloud metadata…).
    #[error("the webhook host resolves to a refused address range ({0})")]
    Address(&'static str),
}

/// The range `ip` falls in when a webhook must not reach it, else `None` (a public address).
/// `allow_loopback`: the development flag `admin.webhook_allow_http_loopback` lets loopback
/// addresses through (and nothing else).
///
/// Refused: unspecified, loopback, RFC 1918 private, CGNAT 100.64/10, link-local (169.254/16 incl.
/// the metadata address 169.254.169.254, fe80::/10), multicast, broadcast, 0/8, 192.0.0/24,
/// benchmarking 198.18/15, documentation ranges, reserved 240/4, IPv6 unique-local fc00::/7
/// (incl. the EC2 metadata address fd00:ec2::254), site-local fec0::/10, and IPv4-mapped or
/// NAT64 forms of any refused IPv4 address.
pub fn refused_range(ip: IpAddr, allow_loopback: bool) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4, allow_loopback),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_v4(v4, allow_loopback);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let v4 =
                    Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
                return refused_v4(v4, allow_loopback);
            }
            if v6.is_unspecified() {
                Some("unspecified")
            } else if v6.is_loopback() {
                (!allow_loopback).then_some("loopback")
            } else if v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254) {
                Some("metadata")
            } else if s[0] & 0xfe00 == 0xfc00 {
                Some("unique-local")
            } else if s[0] & 0xffc0 == 0xfe80 {
                Some("link-local")
            } else if s[0] & 0xffc0 == 0xfec0 {
                Some("site-local")
            } else if v6.is_multicast() {
                Some("multicast")
            } else if s[0] == 0x2001 && s[1] == 0x0db8 {
                Some("documentation")
            } else {
                None
            }
        }
    }
}

fn refused_v4(ip: Ipv4Addr, allow_loopback: bool) -> Option<&'static str> {
    let o = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        Some("metadata")
    } else if ip.is_unspecified() || o[0] == 0 {
        Some("unspecified")
    } else if ip.is_loopback() {
        (!allow_loopback).then_some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        Some("cgnat")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else if ip.is_broadcast() || o[0] >= 240 {
        Some("reserved")
    } else if o[0] == 192 && o[1] == 0 && o[2] == 0 {
        Some("ietf-protocol")
    } else if o[0] == 198 && (o[1] & 0xfe) == 18 {
        Some("benchmarking")
    } else if ip.is_documentation() {
        Some("documentation")
    } else {
        None
    }
}

/// Checks a webhook URL's form: `https`, or `http` to a loopback host when `allow_loopback`; a
/// host; no user info; an IP literal host outside the refused ranges. Name hosts are checked
/// after resolution ([`resolve`]).
pub fn check_url(u: &reqwest::Url, allow_loopback: bool) -> Result<(), Refused> {
    let host = u.host_str().ok_or(Refused::Url)?;
    if !u.username().is_empty() || u.password().is_some() {
        return Err(Refused::Url);
    }
    let loopback = crate::tls::is_loopback(host);
    let scheme_ok = u.scheme() == "https" || (u.scheme() == "http" && loopback && allow_loopback);
    if !scheme_ok {
        return Err(Refused::Scheme);
    }
    if let Some(ip) = literal(u)
        && let Some(r) = refused_range(ip, allow_loopback)
    {
        return Err(Refused::Address(r));
    }
    Ok(())
}

/// The IP address of a URL whose host is an IP literal (the URL parser has already normalised
/// forms such as `http://2130706433/` to dotted quads).
pub fn literal(u: &reqwest::Url) -> Option<IpAddr> {
    let h = u.host_str()?;
    let h = h
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(h);
    h.parse().ok()
}

/// Resolves `host:port` and returns its addresses when every one is allowed (one refused address
/// refuses the host: a name that mixes public and private answers is a rebinding attempt).
///
/// Errors: [`Refused::Unresolved`] (no answer), [`Refused::Address`].
pub async fn resolve(
    host: &str,
    port: u16,
    allow_loopback: bool,
) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| Refused::Unresolved)?
        .collect();
    if addrs.is_empty() {
        return Err(Refused::Unresolved);
    }
    for a in &addrs {
        if let Some(r) = refused_range(a.ip(), allow_loopback) {
            return Err(Refused::Address(r));
        }
    }
    Ok(addrs)
}

/// The resolver of the webhook HTTP client: [`resolve`] for every connection, so the client
/// connects only to addresses that passed the check at connection time (no DNS rebinding
/// between check and connect).
pub struct GuardedResolver {
    pub allow_loopback: bool,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let allow = self.allow_loopback;
        Box::pin(async move {
            let addrs = resolve(&host, 0, allow).await?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

impl GuardedResolver {
    /// As an `Arc` for [`reqwest::ClientBuilder::dns_resolver`].
    pub fn shared(allow_loopback: bool) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver { allow_loopback })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // INT-5.1-1: every refused range, and public addresses pass.
    #[test]
    fn ranges() {
        for (ip, want) in [
            ("10.1.2.3", Some("private")),
            ("172.16.0.1", Some("private")),
            ("192.168.1.1", Some("private")),
            ("127.0.0.1", Some("loopback")),
            ("100.64.0.1", Some("cgnat")),
            ("169.254.169.254", Some("metadata")),
            ("169.254.1.1", Some("link-local")),
            ("224.0.0.1", Some("multicast")),
            ("0.0.0.0", Some("unspecified")),
            ("255.255.255.255", Some("reserved")),
            ("::1", Some("loopback")),
            ("::", Some("unspecified")),
            ("fd00:ec2::254", Some("metadata")),
            ("fc00::1", Some("unique-local")),
            ("fe80::1", Some("link-local")),
            ("ff02::1", Some("multicast")),
            ("::ffff:10.0.0.1", Some("private")),
            ("64:ff9b::a9fe:a9fe", Some("metadata")),
            ("93.184.216.34", None),
            ("2606:4700::1111", None),
        ] {
            assert_eq!(refused_range(ip.parse().unwrap(), false), want, "{ip}");
        }
        assert_eq!(refused_range("127.0.0.1".parse().unwrap(), true), None);
        assert_eq!(
            refused_range("10.0.0.1".parse().unwrap(), true),
            Some("private")
        );
    }
}
