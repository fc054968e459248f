//! Turns verified `.deb` files into a root filesystem without running
//! maintainer scripts: safe extraction, assembly, deterministic tarball.
