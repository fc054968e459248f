//! Image outputs: OCI layout, docker archive, plain tarball, registry push
//! and export.
