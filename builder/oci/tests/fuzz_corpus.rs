//! Replays the `oci_apply` fuzz target's check over its checked-in corpus
//! (`fuzz/corpus/oci_apply`), so stable `cargo test` exercises the same
//! property the fuzzer does: whatever the layers hold, nothing lands
//! outside the root, and no device node or setuid file inside it. The
//! fuzzer itself runs with `cargo +nightly fuzz run oci_apply` in `fuzz/`.

#[path = "../../../fuzz/src/layer.rs"]
mod layer;

#[test]
fn oci_apply_corpus_replays_clean() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/oci_apply");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = e.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let name = path.display().to_string();
        if let Err(panic) = std::panic::catch_unwind(|| layer::check(&data)) {
            std::panic::resume_unwind(Box::new(format!("{name}: {panic:?}")));
        }
        n += 1;
    }
    assert!(n >= 20, "only {n} corpus files in {}", dir.display());
}
