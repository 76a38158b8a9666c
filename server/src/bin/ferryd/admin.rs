//! `ferryd uploads` and `ferryd notice` talk to a running server's admin listener: one plain
//! HTTP request each.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cli::AdminArgs;

impl AdminArgs {
    /// One request to the admin listener; the body of its 200 answer.
    pub(crate) fn call(&self, method: &str, path: &str, body: &str) -> Result<String> {
        let Some(addr) = self.admin_listen else {
            anyhow::bail!(
                "no admin listener given: pass --admin-listen ADDR (as the server's), set \
                 FERRYD_ADMIN_LISTEN, or --config the server's file"
            );
        };
        http(addr, method, path, self.admin_token.as_deref(), body)
    }
}

/// One request to the admin listener (plain HTTP/1.0 over TCP, 10 s at most), the response's
/// body if 200.
fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<String> {
    use std::io::Read;
    let limit = Duration::from_secs(10);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, limit)
        .with_context(|| format!("cannot reach the admin listener at {addr}"))?;
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("the admin listener sent no HTTP response")?;
    let status = head.lines().next().unwrap_or("");
    if !status.contains(" 200 ") {
        anyhow::bail!("{addr}{path}: {status}: {}", body.trim());
    }
    Ok(body.to_owned())
}
