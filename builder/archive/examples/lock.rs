//! Locks a recipe against the configured mirror and prints the lock:
//! `cargo run -p usmol-archive --example lock -- recipes/usmol.toml [out.lock]`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let recipe_path = PathBuf::from(args.next().ok_or("usage: lock RECIPE [OUT]")?);
    let recipe = usmol_recipe::Recipe::load(&recipe_path)?;
    let mirror = usmol_archive::resolve_mirror(None, &recipe)?;
    eprintln!("mirror {} (from {})", mirror.url, mirror.origin);
    let cache = usmol_archive::Cache::default_location();
    let start = std::time::Instant::now();
    let lock = usmol_archive::lock(&recipe, &recipe_path, &mirror, &cache, None)?;
    eprintln!(
        "locked {} packages in {:?}",
        lock.packages.len(),
        start.elapsed()
    );
    let out = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(|| usmol_recipe::Lock::path_for(&recipe_path));
    lock.save(&out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
