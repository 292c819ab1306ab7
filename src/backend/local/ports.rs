//! Ports of the local backend's workloads, held against other deploys while reserved.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

/// A port handed out to a first deploy (held until the record names it) or to an extra replica
/// (held while it runs, adopted after a restart or not; a recorded extra's port also counts as
/// used in the state file, so it is never handed out between a restart and the adoption).
#[derive(Debug)]
pub(super) struct Reserved {
    pub(super) port: u16,
    set: Arc<Mutex<HashSet<u16>>>,
}

impl Drop for Reserved {
    fn drop(&mut self) {
        self.set.lock().expect("reserved ports").remove(&self.port);
    }
}

impl Reserved {
    /// Holds `port`, already inserted into `set`, until dropped.
    pub(super) fn new(port: u16, set: Arc<Mutex<HashSet<u16>>>) -> Reserved {
        Reserved { port, set }
    }
}
