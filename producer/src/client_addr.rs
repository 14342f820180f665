//! Who a client is, for the per-client rate limit when it has no API key: the peer's
//! address, or, when the peer is a trusted proxy (`--trusted-proxies`), the address that
//! proxy says it forwarded for.
//!
//! The chain is read from `Forwarded` (RFC 7239 `for=`), else `X-Forwarded-For`, every
//! header line in order, and walked from the right (the hop nearest to us): trusted
//! proxies are skipped and the first address that is not one is the client. Entries left
//! of it were written by the client or by untrusted hops and are never believed. An entry
//! that is not an IP address (`unknown`, an obfuscated name) stops the walk at the peer:
//! such requests share the proxy's own budget rather than choose their own.

use std::net::IpAddr;
use std::str::FromStr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The proxies whose forwarding headers are believed; empty by default (none are).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

impl TrustedProxies {
    /// Parses a comma-separated list of addresses and CIDRs (`10.0.0.0/8, 127.0.0.1`).
    /// The error names the entry that is neither.
    pub fn parse(list: &str) -> Result<TrustedProxies, String> {
        let nets = list
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                IpNet::from_str(entry)
                    .or_else(|_| IpAddr::from_str(entry).map(IpNet::from))
                    .map_err(|_| format!("{entry:?} is neither an IP address nor a CIDR"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedProxies { nets })
    }

    /// [`TrustedProxies::parse`] for clap.
    pub fn parse_flag(list: &str) -> Result<TrustedProxies, String> {
        TrustedProxies::parse(list)
    }

    fn trusts(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.nets.iter().any(|net| net.contains(&address))
    }

    /// The client behind a request from `peer` carrying `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let chain = forwarded_chain(headers);
        let mut client = peer;
        for entry in chain.iter().rev() {
            let Some(address) = entry else {
                return peer;
            };
            client = *address;
            if !self.trusts(*address) {
                break;
            }
        }
        client
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// The forwarded-for chain, nearest hop last; `None` for an entry that is no address.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<&str> = headers
        .get_all("forwarded")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|line| line.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (name, value) = pair.split_once('=')?;
                    name.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(value.trim().trim_matches('"')))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|line| line.split(','))
        .map(|entry| parse_node(entry.trim()))
        .collect()
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(address) = IpAddr::from_str(node) {
        return Some(canonical(address));
    }
    if let Some(rest) = node.strip_prefix('[') {
        let (inside, _) = rest.split_once(']')?;
        return IpAddr::from_str(inside).ok().map(canonical);
    }
    let (host, _port) = node.rsplit_once(':')?;
    IpAddr::from_str(host).ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let claims = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            proxies.client(ip("198.51.100.7"), &claims),
            ip("198.51.100.7")
        );
        // No proxies configured: nobody is believed.
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("10.0.0.1"), &claims), ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() {
        let proxies = TrustedProxies::parse("10.0.0.0/8, 127.0.0.1").unwrap();
        // The client forged the first entry; the proxy appended the address it saw.
        let forged = headers(&[("x-forwarded-for", "1.2.3.4, 203.0.113.9")]);
        assert_eq!(proxies.client(ip("10.1.2.3"), &forged), ip("203.0.113.9"));
        // Two proxies in a row, over two header lines.
        let two = headers(&[
            ("x-forwarded-for", "1.2.3.4, 203.0.113.9"),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        assert_eq!(proxies.client(ip("127.0.0.1"), &two), ip("203.0.113.9"));
        // Every hop trusted: the farthest one.
        let inside = headers(&[("x-forwarded-for", "10.2.2.2")]);
        assert_eq!(proxies.client(ip("10.1.1.1"), &inside), ip("10.2.2.2"));
        // No header: the proxy itself.
        assert_eq!(
            proxies.client(ip("10.1.1.1"), &HeaderMap::new()),
            ip("10.1.1.1")
        );
        // An entry that is no address stops at the peer.
        let unknown = headers(&[("x-forwarded-for", "unknown")]);
        assert_eq!(proxies.client(ip("10.1.1.1"), &unknown), ip("10.1.1.1"));
        // An IPv4-mapped peer counts as the IPv4 address.
        assert_eq!(
            proxies.client(ip("::ffff:10.1.1.1"), &forged),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for_and_takes_ports_and_brackets() {
        let proxies = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let both = headers(&[
            ("x-forwarded-for", "198.51.100.1"),
            (
                "forwarded",
                r#"for=192.0.2.60;proto=http;by=10.0.0.1, For="[2001:db8:cafe::17]:4711""#,
            ),
        ]);
        assert_eq!(
            proxies.client(ip("10.0.0.2"), &both),
            ip("2001:db8:cafe::17")
        );
        let with_port = headers(&[("forwarded", "for=\"192.0.2.60:8080\"")]);
        assert_eq!(proxies.client(ip("10.0.0.2"), &with_port), ip("192.0.2.60"));
    }

    #[test]
    fn bad_entries_are_named() {
        let err = TrustedProxies::parse("10.0.0.0/8, proxy.internal").unwrap_err();
        assert!(err.contains("proxy.internal"), "{err}");
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("").unwrap().nets.is_empty());
    }
}
