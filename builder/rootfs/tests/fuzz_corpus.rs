//! Replays the `deb_extract` fuzz target's check over its checked-in
//! corpus (`fuzz/corpus/deb_extract`), so stable `cargo test` exercises
//! the same property the fuzzer does: whatever a package's data.tar holds,
//! nothing lands outside the build's output. The fuzzer itself runs with
//! `cargo +nightly fuzz run deb_extract` in `fuzz/`.

#[path = "../../../fuzz/src/deb.rs"]
mod deb;

#[test]
fn deb_extract_corpus_replays_clean() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/deb_extract");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        if let Err(panic) = std::panic::catch_unwind(|| deb::check(&data)) {
            std::panic::resume_unwind(Box::new(format!("{name}: {panic:?}")));
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} corpus files in {}", dir.display());
}
