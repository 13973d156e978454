//! End-to-end tests of ctscope against real kernels and the real conntrack.
