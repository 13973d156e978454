//! The eBPF event source: the object built from conntrack-ebpf, loaded and
//! attached with aya.
//!
//! This first slice embeds the object and checks that it carries the
//! programs and the ring buffer the ABI names; loading and attaching with
//! offsets from BTF come with the event source.
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
