//! Which addresses outbound outcome callbacks may reach.
//!
//! A job's `callback_url` is chosen by whoever submits the job, so by default it may only
//! point at the public internet: loopback, private (RFC 1918), shared (CGNAT), link-local
//! (cloud metadata at `169.254.169.254`), unique-local, multicast, broadcast,
//! documentation, benchmarking and otherwise reserved addresses are refused, IPv4 inside
//! IPv6 (`::ffff:a.b.c.d`) judged as the IPv4 address it carries. An operator allows an
//! internal receiver by host name or CIDR block ([`AllowEntry`], `--callback-allow` and
//! `callback_allow` in the configuration file).
//!
//! The check happens twice: when the job is submitted ([`AddressPolicy::check_url`]: an
//! address literal or a `localhost` name is refused with a `422`), and on every delivery
//! on the addresses actually connected to ([`PolicyResolver`], the callback client's DNS
//! resolver), so a name that resolves to an internal address later (DNS rebinding) is
//! refused as well.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use ipnet::IpNet;

/// IPv4 blocks that are not the public internet (IANA special-purpose registry).
const NON_PUBLIC_V4: &[&str] = &[
    "0.0.0.0/8",       // "this network", 0.0.0.0
    "10.0.0.0/8",      // private
    "100.64.0.0/10",   // shared address space (CGNAT)
    "127.0.0.0/8",     // loopback
    "169.254.0.0/16",  // link-local (cloud metadata)
    "172.16.0.0/12",   // private
    "192.0.0.0/24",    // IETF protocol assignments
    "192.0.2.0/24",    // documentation
    "192.88.99.0/24",  // 6to4 relay anycast (deprecated)
    "192.168.0.0/16",  // private
    "198.18.0.0/15",   // benchmarking
    "198.51.100.0/24", // documentation
    "203.0.113.0/24",  // documentation
    "224.0.0.0/4",     // multicast
    "240.0.0.0/4",     // reserved, and the broadcast address
];

/// IPv6 blocks inside global unicast (`2000::/3`) that are not the public internet.
const NON_PUBLIC_V6: &[&str] = &[
    "2001::/23",     // IETF protocol assignments (Teredo, benchmarking, ORCHID, …)
    "2001:db8::/32", // documentation
    "2002::/16",     // 6to4: carries an IPv4 address of any kind
    "3fff::/20",     // documentation
];

/// Whether `ip` is an address on the public internet (see the module docs).
pub fn is_public(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => !in_any(NON_PUBLIC_V4, IpAddr::V4(v4)),
        IpAddr::V6(v6) => {
            // Only global unicast is public; everything else (loopback, unspecified,
            // unique-local fc00::/7, link-local fe80::/10, multicast ff00::/8, NAT64,
            // IPv4-compatible …) is not.
            let global_unicast = (v6.segments()[0] & 0xe000) == 0x2000;
            global_unicast && !in_any(NON_PUBLIC_V6, IpAddr::V6(v6))
        }
    }
}

/// `ip`, with an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

fn in_any(blocks: &[&str], ip: IpAddr) -> bool {
    blocks.iter().any(|block| {
        // The tables above are constants that parse (checked by a test).
        IpNet::from_str(block).is_ok_and(|net| net.contains(&ip))
    })
}

/// One `--callback-allow` entry: a host name (any address it resolves to is allowed) or an
/// address / CIDR block (`10.1.0.0/16`, `127.0.0.1`, `fd00::/8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowEntry {
    /// A host name, lower case, without a trailing dot.
    Host(String),
    /// Addresses.
    Net(IpNet),
}

impl FromStr for AllowEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(net) = IpNet::from_str(text) {
            return Ok(AllowEntry::Net(canonical_net(net.trunc())));
        }
        if let Ok(ip) = IpAddr::from_str(text) {
            return Ok(AllowEntry::Net(IpNet::from(canonical(ip))));
        }
        let host = normalise_host(text);
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if valid {
            Ok(AllowEntry::Host(host))
        } else {
            Err(format!(
                "{text:?} is neither a host name nor an address or CIDR block (like \
                 hooks.internal, 10.1.0.0/16 or fd00::/8)"
            ))
        }
    }
}

/// An IPv4-mapped IPv6 block as the IPv4 block it is, so it matches canonical addresses.
fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net {
        if let (Some(v4), true) = (v6.addr().to_ipv4_mapped(), v6.prefix_len() >= 96) {
            if let Ok(net) = ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96) {
                return IpNet::V4(net);
            }
        }
    }
    net
}

/// Lower case, without a trailing dot.
fn normalise_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `host` is `localhost` or a name under it (RFC 6761: always loopback).
fn is_localhost(host: &str) -> bool {
    host == "localhost" || host.ends_with(".localhost")
}

/// A callback target was refused: it is not a public address and not allowed. The message
/// names neither the URL nor the address (they may be internal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the callback target is not a public address (loopback, private, link-local or \
     otherwise reserved); an operator can allow an internal receiver with --callback-allow"
)]
pub struct Refused;

/// Where callbacks may go: public addresses, plus what the operator allowed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    hosts: Vec<String>,
    nets: Vec<IpNet>,
}

impl AddressPolicy {
    /// Public addresses plus `allowed`.
    pub fn new(allowed: impl IntoIterator<Item = AllowEntry>) -> AddressPolicy {
        let mut policy = AddressPolicy::default();
        for entry in allowed {
            match entry {
                AllowEntry::Host(host) => policy.hosts.push(host),
                AllowEntry::Net(net) => policy.nets.push(net),
            }
        }
        policy
    }

    /// Whether the operator allowed `host` by name.
    fn allows_host(&self, host: &str) -> bool {
        let host = normalise_host(host);
        self.hosts.contains(&host)
    }

    /// Whether `ip` is public or in an allowed block.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.nets.iter().any(|net| net.contains(&ip))
    }

    /// Whether a connection to `ip`, reached through the name `host`, is allowed.
    pub fn allows(&self, host: &str, ip: IpAddr) -> bool {
        self.allows_host(host) || self.allows_ip(ip)
    }

    /// What can be told before resolving anything: an address literal must be allowed,
    /// and so must `localhost` (always loopback). Other names are checked when they are
    /// resolved ([`PolicyResolver`]).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<(), Refused> {
        // The URL parser normalises hosts: an IPv4 address in any notation (`2130706433`,
        // `0x7f.1`) is written dotted, an IPv6 one in brackets, a name in lower case.
        let Some(host) = url.host_str() else {
            return Err(Refused);
        };
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let allowed = match IpAddr::from_str(literal) {
            Ok(ip) => self.allows_ip(ip),
            Err(_) => {
                let name = normalise_host(host);
                !is_localhost(&name)
                    || self.allows_host(&name)
                    || self.allows_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))
                    || self.allows_ip(IpAddr::V6(Ipv6Addr::LOCALHOST))
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(Refused)
        }
    }

    /// The addresses `host` resolved to that may be connected to; [`Refused`] when none
    /// may.
    pub fn filter(
        &self,
        host: &str,
        resolved: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, Refused> {
        let kept: Vec<SocketAddr> = resolved
            .into_iter()
            .filter(|addr| self.allows(host, addr.ip()))
            .collect();
        if kept.is_empty() {
            Err(Refused)
        } else {
            Ok(kept)
        }
    }
}

/// How a [`PolicyResolver`] turns a host name into addresses (the system resolver by
/// default; tests inject their own answers).
pub type Lookup =
    Arc<dyn Fn(String) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> + Send + Sync>;

/// A DNS resolver for reqwest (`ClientBuilder::dns_resolver`) that only hands out the
/// addresses an [`AddressPolicy`] allows: the check is on the addresses actually
/// connected to. URLs with an address literal never reach a resolver: check them with
/// [`AddressPolicy::check_url`] before sending.
#[derive(Clone)]
pub struct PolicyResolver {
    policy: Arc<AddressPolicy>,
    lookup: Lookup,
}

impl std::fmt::Debug for PolicyResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyResolver")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl PolicyResolver {
    /// Resolves with the system resolver.
    pub fn new(policy: Arc<AddressPolicy>) -> PolicyResolver {
        PolicyResolver::with_lookup(
            policy,
            Arc::new(|host: String| {
                Box::pin(
                    async move { Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect()) },
                )
            }),
        )
    }

    /// Resolves with `lookup`.
    pub fn with_lookup(policy: Arc<AddressPolicy>, lookup: Lookup) -> PolicyResolver {
        PolicyResolver { policy, lookup }
    }
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let policy = self.policy.clone();
        let lookup = (self.lookup)(host.clone());
        Box::pin(async move {
            let resolved = lookup.await?;
            let kept = policy.filter(&host, resolved)?;
            let addrs: reqwest::dns::Addrs = Box::new(kept.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn the_block_tables_parse() {
        for block in NON_PUBLIC_V4.iter().chain(NON_PUBLIC_V6) {
            IpNet::from_str(block).unwrap_or_else(|e| panic!("{block}: {e}"));
        }
    }

    #[test]
    fn internal_and_reserved_addresses_are_not_public() {
        for text in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "255.255.255.255",
            "224.0.0.1",
            "240.0.0.1",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "192.0.0.170",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "2001::1",
            "2002:7f00:1::1",
            "3fff::1",
        ] {
            assert!(!is_public(ip(text)), "{text} counted as public");
            assert!(!AddressPolicy::default().allows_ip(ip(text)), "{text}");
        }
        for text in [
            "93.184.215.14",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "::ffff:93.184.215.14",
            "2606:4700::1111",
            "2a00:1450:4001::1",
        ] {
            assert!(is_public(ip(text)), "{text} counted as internal");
        }
    }

    #[test]
    fn allow_entries_parse_hosts_addresses_and_blocks() {
        assert_eq!(
            "Hooks.Internal.".parse::<AllowEntry>().unwrap(),
            AllowEntry::Host("hooks.internal".into())
        );
        assert_eq!(
            "10.1.2.3/16".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net("10.1.0.0/16".parse().unwrap())
        );
        assert_eq!(
            " 127.0.0.1 ".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net("127.0.0.1/32".parse().unwrap())
        );
        assert_eq!(
            "::ffff:127.0.0.0/104".parse::<AllowEntry>().unwrap(),
            AllowEntry::Net("127.0.0.0/8".parse().unwrap())
        );
        for bad in ["", "10.0.0.0/33", "http://x", "a b", "x/8", "a..b"] {
            assert!(bad.parse::<AllowEntry>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn allowed_blocks_and_hosts_open_internal_addresses() {
        let policy = AddressPolicy::new([
            "127.0.0.1/32".parse().unwrap(),
            "fd00::/8".parse().unwrap(),
            "hooks.internal".parse().unwrap(),
        ]);
        assert!(policy.allows_ip(ip("127.0.0.1")));
        assert!(policy.allows_ip(ip("::ffff:127.0.0.1")));
        assert!(!policy.allows_ip(ip("127.0.0.2")));
        assert!(policy.allows_ip(ip("fd00::5")));
        assert!(!policy.allows_ip(ip("10.0.0.1")));
        assert!(policy.allows("HOOKS.internal.", ip("10.0.0.1")));
        assert!(!policy.allows("other.internal", ip("10.0.0.1")));
    }

    #[test]
    fn submit_time_checks_refuse_literals_and_localhost() {
        let url = |text: &str| reqwest::Url::parse(text).unwrap();
        let strict = AddressPolicy::default();
        for text in [
            "http://127.0.0.1:8080/hook",
            "http://2130706433/",
            "http://0x7f.1/",
            "http://0/",
            "http://[::1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.1/",
            "http://[fd00::1]/",
            "http://localhost:9000/",
            "http://LOCALHOST./",
            "http://api.localhost/",
        ] {
            assert_eq!(strict.check_url(&url(text)), Err(Refused), "{text}");
        }
        for text in ["https://hooks.example.com/x", "http://93.184.215.14/"] {
            assert_eq!(strict.check_url(&url(text)), Ok(()), "{text}");
        }
        let loopback = AddressPolicy::new(["127.0.0.1/32".parse().unwrap()]);
        assert_eq!(loopback.check_url(&url("http://127.0.0.1:8080/")), Ok(()));
        assert_eq!(loopback.check_url(&url("http://localhost:8080/")), Ok(()));
        assert_eq!(loopback.check_url(&url("http://10.0.0.1/")), Err(Refused));
    }

    /// A name that resolves to an internal address (as DNS rebinding makes it) is refused
    /// when resolved; public answers among internal ones are kept.
    #[test]
    fn resolved_addresses_are_filtered() {
        let at = |text: &str| SocketAddr::new(ip(text), 0);
        let strict = AddressPolicy::default();
        assert_eq!(
            strict.filter("rebind.example", [at("127.0.0.1"), at("::1")]),
            Err(Refused)
        );
        assert_eq!(
            strict.filter("meta.example", [at("169.254.169.254")]),
            Err(Refused)
        );
        assert_eq!(strict.filter("empty.example", []), Err(Refused));
        assert_eq!(
            strict.filter("mixed.example", [at("10.0.0.1"), at("93.184.215.14")]),
            Ok(vec![at("93.184.215.14")])
        );
        let named = AddressPolicy::new(["hooks.internal".parse().unwrap()]);
        assert_eq!(
            named.filter("hooks.internal", [at("10.0.0.1")]),
            Ok(vec![at("10.0.0.1")])
        );
    }

    #[tokio::test]
    async fn the_resolver_hands_out_only_allowed_addresses() {
        use reqwest::dns::Resolve;
        let lookup: Lookup = Arc::new(|_host: String| {
            Box::pin(async {
                Ok(vec![
                    SocketAddr::new(ip("127.0.0.1"), 0),
                    SocketAddr::new(ip("93.184.215.14"), 0),
                ])
            })
        });
        let resolver = PolicyResolver::with_lookup(Arc::default(), lookup.clone());
        let addrs: Vec<SocketAddr> = resolver
            .resolve("rebind.example".parse().unwrap())
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, vec![SocketAddr::new(ip("93.184.215.14"), 0)]);
        let internal_only: Lookup =
            Arc::new(|_| Box::pin(async { Ok(vec![SocketAddr::new(ip("10.9.8.7"), 0)]) }));
        let refused = PolicyResolver::with_lookup(Arc::default(), internal_only)
            .resolve("rebind.example".parse().unwrap())
            .await
            .err()
            .expect("refused");
        assert_eq!(refused.to_string(), Refused.to_string());
    }
}
