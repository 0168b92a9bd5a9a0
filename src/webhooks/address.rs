//! `--webhook-public-only`: webhooks go to public internet addresses only, so that whoever may
//! create sessions cannot make the service send requests into its own network (the metadata
//! service of a cloud VM, an admin port on localhost, a host on the private LAN).
//!
//! Checked twice: a session's `webhook_url` whose host is a non-public IP literal is refused at
//! creation, and at delivery the client connects only to the public addresses a name resolves to
//! (the resolver below), so a name that resolves to a private address, or is changed to, is
//! refused too. A delivery refused this way fails at once, without retries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a delivery was refused: the host is not a public internet address.
#[derive(Debug, thiserror::Error)]
#[error("{0} is not a public internet address (--webhook-public-only)")]
pub struct NotPublic(pub String);

/// Whether `ip` is on the public internet: not loopback, private, shared (CGNAT), link-local
/// (cloud metadata), unspecified, broadcast, multicast, documentation or benchmarking space, nor
/// the IPv6 equivalents (unique local, link-local, IPv4-mapped private addresses).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10, shared address space
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24, protocol assignments
        || (a == 198 && (18..20).contains(&b)) // 198.18.0.0/15, benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // fc00::/7, unique local
        || (first & 0xffc0) == 0xfe80 // fe80::/10, link-local
        || (first == 0x2001 && ip.segments()[1] == 0x0db8)) // 2001:db8::/32, documentation
}

/// The host of an http(s) URL, if it is an IP literal that is not public.
pub fn non_public_literal(url: &str) -> Option<String> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?;
    // An IPv6 literal keeps its brackets in the URL's host.
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    (!is_public(ip)).then(|| ip.to_string())
}

/// A resolver for the webhook client that keeps only public addresses, and fails with
/// [`NotPublic`] when a name has none.
pub struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = all.into_iter().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() {
                return Err(Box::new(NotPublic(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(public.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn literal_hosts_are_checked_and_names_left_to_delivery() {
        assert_eq!(
            non_public_literal("http://169.254.169.254/latest/meta-data"),
            Some("169.254.169.254".into())
        );
        assert_eq!(
            non_public_literal("https://[::1]:8443/hook"),
            Some("::1".into())
        );
        assert_eq!(non_public_literal("https://93.184.216.34/hook"), None);
        assert_eq!(non_public_literal("https://claims.example/hook"), None);
    }
}
