//! Which address of a service a connection goes to: every address of every `--server` name,
//! the one that worked last first (a random one before any did, so clients spread), the node
//! of a lost connection last, and never a node of another service.

use std::net::SocketAddr;

use ferry_proto::ErrorCode;

use super::{Connection, Endpoint, Target};
use crate::ClientError;

impl Endpoint {
    /// Connects to the first address of the service that answers, checks the certificate,
    /// says hello. Every address of every name in `target` is a candidate (`Route` orders
    /// them); an address that does not answer, or whose connection breaks before `welcome`,
    /// passes the turn to the next one. A refusal (token, version, certificate) does not.
    pub async fn connect(&self, target: &Target) -> Result<Connection, ClientError> {
        let candidates = self.candidates(target).await?;
        let many = candidates.len() > 1;
        let mut failed = None;
        for (name, addr) in candidates {
            match self.connect_to(target, &name, addr).await {
                Ok(conn) => match self.admit(&conn, &name, addr) {
                    Ok(()) => return Ok(conn),
                    Err(e) => {
                        conn.close();
                        failed = Some(e);
                    }
                },
                Err(e @ (ClientError::Unreachable(_) | ClientError::Connection(_))) => {
                    failed = Some(e)
                }
                Err(
                    e @ ClientError::Server {
                        code: ErrorCode::ShuttingDown | ErrorCode::TooManyConnections,
                        ..
                    },
                ) => failed = Some(e),
                Err(e) => return Err(e),
            }
            if let (true, Some(e), Some(report)) = (many, &failed, &self.reporter) {
                report(&format!(
                    "ferry: {name} ({addr}): {e}; trying the next address"
                ));
            }
        }
        Err(failed.expect("at least one candidate"))
    }

    /// Every address of every server name, in the order to try them: the family of the
    /// endpoint's socket, the address that worked last first (a random one before any did),
    /// the address of a connection that was lost last.
    async fn candidates(&self, target: &Target) -> Result<Vec<(String, SocketAddr)>, ClientError> {
        let mut all: Vec<(String, SocketAddr)> = Vec::new();
        let mut unresolved = None;
        for name in std::iter::once(&target.server).chain(&target.alternates) {
            match resolve(name, self.ipv6).await {
                Ok(addrs) => {
                    for addr in addrs {
                        if !all.iter().any(|(_, a)| *a == addr) {
                            all.push((name.clone(), addr));
                        }
                    }
                }
                // One name that does not resolve (a node's record withdrawn) is not fatal
                // while another leads somewhere.
                Err(e) => unresolved = Some(e),
            }
        }
        if all.is_empty() {
            return Err(unresolved.unwrap_or_else(|| {
                ClientError::Usage(format!(
                    "server address {:?} resolves to nothing",
                    target.server
                ))
            }));
        }
        let route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        let start = match route
            .first
            .and_then(|f| all.iter().position(|(_, a)| *a == f))
        {
            Some(i) => i,
            None => random_index(all.len()),
        };
        all.rotate_left(start);
        // A connection that ended without this side closing it: its node is tried last.
        let lost = route.last.as_ref().and_then(|c| match c.close_reason() {
            None | Some(quinn::ConnectionError::LocallyClosed) => None,
            Some(_) => Some(c.remote_address()),
        });
        if let Some(lost) = lost {
            if let Some(i) = all.iter().position(|(_, a)| *a == lost) {
                let moved = all.remove(i);
                all.push(moved);
            }
        }
        Ok(all)
    }

    /// Takes a new connection as the way in, unless it leads to another service than the one
    /// this endpoint reached first (a stray address must not receive uploads).
    fn admit(&self, conn: &Connection, name: &str, addr: SocketAddr) -> Result<(), ClientError> {
        let mut route = self.route.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(service) = &route.service {
            if !conn.service.is_empty() && conn.service != *service {
                return Err(ClientError::Unreachable(format!(
                    "{name} ({addr}) is another service (id {}, not {service}); not used",
                    conn.service
                )));
            }
        } else if !conn.service.is_empty() {
            route.service = Some(conn.service.clone());
        }
        route.first = Some(addr);
        route.last = Some(conn.connection.clone());
        Ok(())
    }
}

/// The addresses of `server` in the endpoint's family (a name like `localhost` may resolve to
/// both; the other family is kept only when there is nothing else, to say why it failed).
async fn resolve(server: &str, ipv6: bool) -> Result<Vec<SocketAddr>, ClientError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map_err(|e| {
            ClientError::Usage(format!(
                "cannot resolve server address {server:?} (want HOST:PORT): {e}"
            ))
        })?
        .collect();
    let family: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| a.is_ipv6() == ipv6)
        .collect();
    match (family.is_empty(), addrs.first()) {
        (false, _) => Ok(family),
        (true, Some(&other)) => Ok(vec![other]),
        (true, None) => Err(ClientError::Usage(format!(
            "server address {server:?} resolves to nothing"
        ))),
    }
}

/// A random index below `len` (the first node a client tries, so clients spread).
fn random_index(len: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    (h.finish() % len.max(1) as u64) as usize
}
