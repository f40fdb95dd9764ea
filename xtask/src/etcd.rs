//! What the cluster tests need: Debian's `etcd-server` (`/usr/bin/etcd`), installed on first
//! use. The tests start their own `etcd` processes on free loopback ports in temporary
//! folders; the package's systemd unit (where systemd runs) is none of theirs.

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::setup;

const ETCD: &str = "/usr/bin/etcd";

/// Makes sure `etcd` is installed; returns its path.
pub fn ensure() -> Result<PathBuf> {
    let etcd = PathBuf::from(ETCD);
    if !etcd.is_file() {
        setup::apt_install(
            "etcd not found (the cluster tests run real etcd processes)",
            &["etcd-server"],
        )?;
        if !etcd.is_file() {
            bail!(
                "need etcd at {ETCD}: install it (Debian: `apt-get install etcd-server`) and rerun"
            );
        }
    }
    Ok(etcd)
}
