//! Hostile and mistaken recipes: each is refused with a message that names
//! the file, and the line and column or the key at fault. (Unknown package
//! names and dependency cycles are the resolver's: builder/archive's
//! `unsatisfiable_names_the_chain` and `cycles_terminate_and_arch_qualifiers`.)

use std::path::Path;

use usmol_recipe::Recipe;

const BASE: &str = "[distribution]\nsuites = [\"trixie\"]\n\n[packages]\ninclude = [\"tini\"]\n";

fn refused(text: &str) -> String {
    match Recipe::parse(Path::new("recipes/bad.toml"), text) {
        Ok(r) => panic!("accepted: {r:?}\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_keys_in_every_table_are_named_with_their_position() {
    for (text, key) in [
        (format!("{BASE}colour = 1\n"), "colour"),
        (BASE.replace("suites", "suite"), "suite"),
        (format!("{BASE}exclud = []\n"), "exclud"),
        (
            format!("{BASE}\n[rootfs]\npath_exlude = []\n"),
            "path_exlude",
        ),
        (
            format!("{BASE}\n[[rootfs.users]]\nname = \"a\"\nuid = 5\nshel = \"/bin/sh\"\n"),
            "shel",
        ),
        (format!("{BASE}\n[extra]\nx = 1\n"), "extra"),
    ] {
        let msg = refused(&text);
        assert!(msg.starts_with("recipes/bad.toml:"), "{msg}");
        assert!(
            msg.contains(&format!("unknown field `{key}`")),
            "{key}: {msg}"
        );
    }
}

#[test]
fn wrong_types_and_garbage_are_refused_with_a_position() {
    for text in [
        BASE.replace("[\"tini\"]", "\"tini\""),
        BASE.replace("[\"tini\"]", "[1, 2]"),
        format!("{BASE}essential = \"yes\"\n"),
        format!("{BASE}\n[[rootfs.users]]\nname = \"a\"\nuid = -1\n"),
        "[distribution\nsuites = []".to_owned(),
        "\u{0}\u{1}binary".to_owned(),
        String::new(),
    ] {
        let msg = refused(&text);
        assert!(msg.starts_with("recipes/bad.toml"), "{msg}");
    }
}

#[test]
fn empty_suites_are_refused_by_name() {
    let msg = refused(&BASE.replace("[\"trixie\"]", "[]"));
    assert!(msg.contains("suites"), "{msg}");
}
