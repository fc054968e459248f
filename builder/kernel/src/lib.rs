//! The User Mode Linux kernel: source unpacking, patches, config fragments,
//! a reproducible build, and a cache keyed by every input.
