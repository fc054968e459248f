//! The signed Debian archive: recipes, mirrors, InRelease verification,
//! Packages indexes, dependency resolution, lock files and the download cache.
