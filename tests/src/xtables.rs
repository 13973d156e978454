//! A connlabel.conf for a test: written to a directory of its own, which
//! [`Netns::exec_with_xtables`](crate::Netns::exec_with_xtables) mounts over
//! /etc/xtables in a private mount namespace, so the host's files stay as
//! they are.

use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// /etc/xtables for the test: created when missing (the bind mount needs
/// a directory to cover) and removed again if it was.
pub struct XtablesDir {
    created: bool,
    /// The directory that holds the test's connlabel.conf.
    pub conf: PathBuf,
}

impl XtablesDir {
    /// A directory holding `connlabel` as connlabel.conf, unique to this
    /// process and call (tests of one binary run in parallel).
    pub fn new(connlabel: &[u8]) -> Self {
        let created = !Path::new("/etc/xtables").exists();
        std::fs::create_dir_all("/etc/xtables").expect("mkdir /etc/xtables");
        let conf = std::env::temp_dir().join(format!(
            "ctscope-xtables-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&conf).expect("mkdir the test's xtables dir");
        std::fs::write(conf.join("connlabel.conf"), connlabel).expect("write connlabel.conf");
        Self { created, conf }
    }
}

impl Drop for XtablesDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.conf);
        if self.created {
            let _ = std::fs::remove_dir("/etc/xtables");
        }
    }
}
