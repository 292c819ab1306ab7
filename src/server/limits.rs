//! What one client may hold of the server: [`Limits`] on connections and their time, applied by
//! the accept loop ([`super::serve`]) and each connection's task ([`super::connection`]).

use std::time::Duration;

/// Connection limits (`jac-orc serve --header-read-timeout`, `--idle-timeout`,
/// `--max-connections`, `--max-streams`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A TLS handshake, and an HTTP/1 request's headers, must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2: GOAWAY first).
    /// A connection that never sends a whole request is closed after it too, so this also
    /// bounds how long HTTP/2 headers may take.
    pub idle_timeout: Duration,
    /// Connections served at once; further ones wait in the listen backlog until one closes.
    /// Lowered at start to fit the process's open-file limit ([`Limits::fitted`]).
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams (requests) per connection.
    pub max_streams: u32,
}

/// File descriptors kept free for everything but client connections: module-server channels,
/// the Kubernetes client, local workloads' logs and pipes, state files.
pub const RESERVED_FDS: u64 = 64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_connections: 1024,
            max_streams: 256,
        }
    }
}

impl Limits {
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    #[must_use]
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    #[must_use]
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    #[must_use]
    pub fn max_streams(mut self, n: u32) -> Self {
        self.max_streams = n;
        self
    }

    /// These limits with `max_connections` lowered so that connections can never exhaust an
    /// open-file limit of `nofile` (the soft `RLIMIT_NOFILE`), keeping [`RESERVED_FDS`] free;
    /// at least one connection.
    #[must_use]
    pub fn fitted(mut self, nofile: Option<u64>) -> Self {
        if let Some(n) = nofile {
            let room = usize::try_from(n.saturating_sub(RESERVED_FDS).max(1)).unwrap_or(usize::MAX);
            self.max_connections = self.max_connections.clamp(1, room);
        }
        self.max_connections = self.max_connections.max(1);
        self
    }
}

/// The soft open-file limit of this process, if it has one.
pub fn open_file_limit() -> Option<u64> {
    let (soft, _hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).ok()?;
    (soft != nix::sys::resource::RLIM_INFINITY).then_some(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        let l = Limits::default();
        assert_eq!(l.fitted(None).max_connections, 1024);
        assert_eq!(l.fitted(Some(1_048_576)).max_connections, 1024);
        assert_eq!(l.fitted(Some(256)).max_connections, 192);
        assert_eq!(l.fitted(Some(10)).max_connections, 1);
        assert_eq!(l.max_connections(0).fitted(None).max_connections, 1);
    }
}
