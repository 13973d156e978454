//! The eBPF event source: the object built from conntrack-ebpf, loaded and
//! attached with aya.
//!
//! This slice embeds the object, checks that it carries the programs and
//! the ring buffer the ABI names, and tries to load and attach them so that
//! `--source auto` can say precisely why it falls back to ctnetlink. Reading
//! full records (offsets from BTF) is the next slice of the event source.
use std::path::Path;

use aya::programs::KProbe;
use aya_obj::Object;

/// The eBPF object built by aya-build from conntrack-ebpf (build.rs).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/conntrack"));

/// Why the eBPF object cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TracerError {
    /// The embedded object does not parse.
    #[error("the embedded eBPF object is invalid: {0}")]
    BadObject(String),
    /// A program or map the ABI names is missing from the object.
    #[error("the embedded eBPF object lacks {0}")]
    Missing(String),
}

/// The names of the programs in the object, checked against the ABI.
pub fn object_programs() -> Result<Vec<String>, TracerError> {
    let obj = Object::parse(EBPF_OBJECT).map_err(|e| TracerError::BadObject(e.to_string()))?;
    if !obj.maps.contains_key(conntrack_ebpf::RING_MAP) {
        return Err(TracerError::Missing(format!(
            "map {}",
            conntrack_ebpf::RING_MAP
        )));
    }
    let mut names: Vec<String> = obj.programs.keys().cloned().collect();
    names.sort();
    Ok(names)
}

/// Where the kernel lists its kprobe PMU; absent when CONFIG_KPROBES is off.
const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe";

/// Tries to load the programs and attach the probes in this kernel. The
/// error names the missing piece (no kprobes, refused load, missing
/// function).
pub fn try_attach() -> Result<(), String> {
    if !Path::new(KPROBE_PMU).exists() {
        return Err(format!(
            "this kernel has no kprobes (no {KPROBE_PMU}: CONFIG_KPROBES is off)"
        ));
    }
    let mut ebpf =
        aya::Ebpf::load(EBPF_OBJECT).map_err(|e| format!("loading the eBPF object: {e}"))?;
    let program: &mut KProbe = ebpf
        .program_mut("nf_ct_delete")
        .ok_or("the eBPF object lacks nf_ct_delete")?
        .try_into()
        .map_err(|e| format!("nf_ct_delete is not a kprobe: {e}"))?;
    program
        .load()
        .map_err(|e| format!("the kernel refused the kprobe program: {e}"))?;
    program
        .attach("nf_ct_delete", 0)
        .map_err(|e| format!("cannot attach a kprobe to nf_ct_delete: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_build_embeds_the_conntrack_programs_and_ring() {
        let programs = object_programs().expect("object parses and has the ring map");
        assert!(
            programs.iter().any(|p| p == "nf_ct_delete"),
            "programs: {programs:?}"
        );
    }
}
