#!/bin/sh
# Makes nf_conntrack pick its hash seed now, while nothing else runs in the
# guest (init.sh after loading the modules, run-tests.sh before each
# script: a script may have reloaded nf_conntrack).
# The first hash_conntrack_raw() call (get_random_once) turns a static key
# off from a work item, which patches the code with int3 (text_poke_bp).
# With qemu's multi-threaded TCG another vCPU then in that code took the
# int3 once the patch was over: "Oops: int3 ... hash_conntrack_raw" and a
# panic under ctchurn (Debian 6.12.117, qemu 7.2, -smp 2, no -icount).
conntrack -I -p udp -s 192.0.2.1 -d 192.0.2.2 --sport 9 --dport 9 -t 1 >/dev/null 2>&1
conntrack -D -p udp -s 192.0.2.1 -d 192.0.2.2 >/dev/null 2>&1
# The work item runs on a kworker.
sleep 0.5
