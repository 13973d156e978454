//! What the kernel's skipped runs of the programs cost in events.
use super::PROBES;

/// Events lost to the runs the kernel skipped, from each attached program's
/// count of skipped runs. A kprobe and its kretprobe on one function (the
/// [`PROBES`] pairs) make one event between them, and the kernel skips both
/// halves of a call together: they run at the same nesting level on the
/// same CPU, so what made it skip one (a BPF program or a kprobe handler
/// that the call interrupted, below it on that CPU) is still there for the
/// other. A pair's loss is therefore the larger of its two counts, not
/// their sum, which would count each lost event twice. (It is less than the
/// loss only if the kretprobe alone missed some calls, out of kretprobe
/// instances, while the kprobe alone missed others.) Every other program
/// makes its events alone.
pub(super) fn events_skipped(runs: &[(&str, u64)]) -> u64 {
    let mut by_event: Vec<(&str, u64)> = Vec::with_capacity(runs.len());
    for &(program, n) in runs {
        let event = PROBES
            .iter()
            .find(|(p, _)| *p == program)
            .map_or(program, |(_, function)| function);
        match by_event.iter_mut().find(|(e, _)| *e == event) {
            Some((_, most)) => *most = (*most).max(n),
            None => by_event.push((event, n)),
        }
    }
    by_event.iter().map(|(_, n)| n).sum()
}

#[cfg(test)]
mod tests {
    use super::{
        super::{UPDATE_FENTRY, UPDATE_KPROBE},
        *,
    };

    #[test]
    fn a_kprobe_pair_loses_one_event_when_both_halves_are_skipped() {
        // Both halves of 3 confirmations skipped: 3 NEW lost, not 6.
        let runs = [("ct_confirm_entry", 3), ("ct_confirm_exit", 3)];
        assert_eq!(events_skipped(&runs), 3);
        // Pairs count apart, each its larger half; single programs alone.
        let runs = [
            ("ct_confirm_entry", 3),
            ("ct_confirm_exit", 3),
            ("ct_insert_entry", 0),
            ("ct_insert_exit", 1),
            ("ct_delete_entry", 2),
            ("ct_delete_exit", 0),
            (UPDATE_KPROBE, 4),
        ];
        assert_eq!(events_skipped(&runs), 3 + 1 + 2 + 4);
        // fentry/fexit programs are one event each.
        let runs = [
            ("ct_insert_fentry", 2),
            ("ct_delete_fexit", 5),
            (UPDATE_FENTRY, 1),
        ];
        assert_eq!(events_skipped(&runs), 8);
        assert_eq!(events_skipped(&[]), 0);
    }
}
