//! Which clients get answers: the `server.allow` networks; everyone else gets REFUSED.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone)]
pub struct Acl {
    allowed: Vec<IpNet>,
}

impl Acl {
    pub fn new(allowed: &[IpNet]) -> Self {
        Self {
            allowed: allowed.to_vec(),
        }
    }

    /// Whether `client` may query us. IPv4-mapped IPv6 sources (a dual-stack `[::]` socket) are
    /// checked as the IPv4 address they are.
    pub fn allows(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        self.allowed.iter().any(|net| net.contains(&client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        let acl = Acl::new(&["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()]);
        assert!(acl.allows("127.0.0.2".parse().unwrap()));
        assert!(acl.allows("::1".parse().unwrap()));
        assert!(acl.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!acl.allows("192.0.2.1".parse().unwrap()));
        assert!(!Acl::new(&[]).allows("127.0.0.1".parse().unwrap()));
    }
}
