//! `usmol`: the builder's command line, thin over the pipeline in `lib.rs`.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use usmol::{ImageMeta, KernelOptions, MirrorChoice};
use usmol_archive::Cache;

#[derive(Parser)]
#[command(name = "usmol", version, about = "Build, push and export usmol images")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct FetchArgs {
    /// Debian mirror URL (else $USMOL_MIRROR, the recipe, the host's apt sources).
    #[arg(long)]
    mirror: Option<String>,
    /// Resolve the recipe anew and rewrite its lock file.
    #[arg(long)]
    update_lock: bool,
}

#[derive(clap::Args)]
struct KernelArgs {
    /// The recipe pinning the kernel source package.
    #[arg(long, default_value = "recipes/kernel.toml")]
    kernel_recipe: PathBuf,
    /// Kernel config fragments.
    #[arg(long, default_value = "kernel")]
    fragments: PathBuf,
    /// Kernel patches, applied in name order.
    #[arg(long, default_value = "patches")]
    patches: PathBuf,
    /// The recipe of the sysroot the kernel is compiled in.
    #[arg(long, default_value = "recipes/toolchain.toml")]
    toolchain_recipe: PathBuf,
    /// Compile with the host's gcc, make, flex... instead of the sysroot
    /// (the output then depends on the host's tool versions).
    #[arg(long)]
    host_tools: bool,
    /// Build from this kernel.org release (`linux-X.Y.Z.tar.xz`) instead of
    /// Debian's linux-source; verified first against vendor-keys/kernel.org.
    #[arg(long, requires = "kernel_org_signature", value_name = "TAR_XZ")]
    kernel_org_tarball: Option<PathBuf>,
    /// The release's detached signature, `linux-X.Y.Z.tar.sign`.
    #[arg(long, requires = "kernel_org_tarball", value_name = "TAR_SIGN")]
    kernel_org_signature: Option<PathBuf>,
}

impl KernelArgs {
    /// The kernel.org source, verified, when one is given; verification
    /// comes before any fetch or build.
    fn verified_kernel_org(&self) -> Result<Option<usmol::KernelOrgSource>> {
        match (&self.kernel_org_tarball, &self.kernel_org_signature) {
            (Some(tarball), Some(signature)) => {
                let source = usmol::verify_kernel_org(tarball, signature)?;
                eprintln!(
                    "kernel: {} verified, signed by {}",
                    tarball.display(),
                    source.verified.signer_fingerprint
                );
                Ok(Some(source))
            }
            _ => Ok(None),
        }
    }
}

#[derive(clap::Args)]
struct PasstArgs {
    /// The recipe pinning passt's Debian source package.
    #[arg(long, default_value = "recipes/passt.toml")]
    passt_recipe: PathBuf,
    /// Our passt patches, applied after Debian's in name order.
    #[arg(long, default_value = "patches/passt")]
    passt_patches: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Resolve a recipe against the archive and write its lock file.
    Lock {
        #[arg(long)]
        recipe: PathBuf,
        #[arg(long)]
        mirror: Option<String>,
    },
    /// Build a root filesystem (tarball, manifest and optionally a tree).
    Rootfs {
        #[arg(long, default_value = "recipes/usmol.toml")]
        recipe: PathBuf,
        #[arg(long, default_value = "out/rootfs")]
        out: PathBuf,
        /// Also write the root filesystem as a directory tree here.
        #[arg(long)]
        tree: Option<PathBuf>,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Build (or find in the cache) the UML kernel.
    Kernel {
        #[command(flatten)]
        kernel: KernelArgs,
        #[arg(long, default_value = "out/kernel")]
        out: PathBuf,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Build (or find in the cache) static passt and passt.avx2 from
    /// Debian's source package with our patches.
    Passt {
        #[command(flatten)]
        passt: PasstArgs,
        /// The recipe of the sysroot passt is compiled in.
        #[arg(long, default_value = "recipes/toolchain.toml")]
        toolchain_recipe: PathBuf,
        #[arg(long, default_value = "out/passt")]
        out: PathBuf,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Build every artifact: root disk, kernel, passt, OCI image, docker
    /// archive, plain tarball.
    Image {
        #[arg(long, default_value = "recipes/usmol.toml")]
        recipe: PathBuf,
        #[command(flatten)]
        kernel: KernelArgs,
        #[command(flatten)]
        passt: PasstArgs,
        /// The static launcher binary (`cargo xtask runtime` builds it).
        #[arg(long)]
        launcher: PathBuf,
        /// The static init binary.
        #[arg(long)]
        init: PathBuf,
        #[arg(long, default_value = "out")]
        out: PathBuf,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Push an OCI layout to a registry: `usmol push out/usmol-oci host/repo:tag`
    /// (zstd layers), or `out/usmol-oci-gzip` for engines before Docker 23.
    Push { layout: PathBuf, reference: String },
    /// Pull an image (or read an OCI layout) into a runnable directory.
    Export { source: String, dir: PathBuf },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let progress = std::io::stderr().is_terminal();
    let cache_dir = usmol_archive::cache_dir();
    let cache = Cache::new(&cache_dir).with_progress(progress);
    match cli.command {
        Command::Lock { recipe, mirror } => {
            let fetched = usmol::fetch(&recipe, &MirrorChoice { flag: mirror }, true, &cache)?;
            println!(
                "{}: {} packages",
                recipe.display(),
                fetched.lock.packages.len()
            );
        }
        Command::Rootfs {
            recipe,
            out,
            tree,
            fetch,
        } => {
            let fetched = usmol::fetch(
                &recipe,
                &MirrorChoice { flag: fetch.mirror },
                fetch.update_lock,
                &cache,
            )?;
            let epoch = usmol::source_date_epoch(&fetched.lock)?;
            let outputs = usmol::rootfs(&fetched, epoch, &out, tree.as_deref())?;
            println!("rootfs:   {}", outputs.tarball.display());
            println!("manifest: {}", outputs.manifest.display());
        }
        Command::Kernel { kernel, out, fetch } => {
            let kernel_org = kernel.verified_kernel_org()?;
            let mirror = MirrorChoice { flag: fetch.mirror };
            let artifact = match &kernel_org {
                Some(source) => {
                    let options =
                        kernel_options(&kernel, &mirror, fetch.update_lock, &cache, progress)?;
                    usmol::kernel_from_kernel_org(source, &options, &cache_dir)?
                }
                None => {
                    let fetched =
                        usmol::fetch(&kernel.kernel_recipe, &mirror, fetch.update_lock, &cache)?;
                    let options =
                        kernel_options(&kernel, &mirror, fetch.update_lock, &cache, progress)?;
                    usmol::kernel(&fetched, &options, &cache_dir)?
                }
            };
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for (from, name) in [
                (&artifact.binary, "linux"),
                (&artifact.config, "linux.config"),
            ] {
                std::fs::copy(from, out.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
            println!(
                "kernel: {} ({})",
                out.join("linux").display(),
                if artifact.cached { "cached" } else { "built" }
            );
        }
        Command::Passt {
            passt,
            toolchain_recipe,
            out,
            fetch,
        } => {
            let mirror = MirrorChoice { flag: fetch.mirror };
            let source =
                usmol::fetch_source(&passt.passt_recipe, &mirror, fetch.update_lock, &cache)?;
            let toolchain = usmol::fetch(&toolchain_recipe, &mirror, fetch.update_lock, &cache)?;
            let sysroot = usmol::toolchain_sysroot(&toolchain, cache.root())?;
            let artifact = usmol::passt(&source, &passt.passt_patches, &sysroot, &cache_dir)?;
            std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
            for (from, name) in [
                (&artifact.passt, "passt"),
                (&artifact.passt_avx2, "passt.avx2"),
                (&artifact.copyright, "passt.copyright"),
            ] {
                std::fs::copy(from, out.join(name))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
            println!(
                "passt: {} ({})",
                out.join("passt").display(),
                if artifact.cached { "cached" } else { "built" }
            );
        }
        Command::Image {
            recipe,
            kernel,
            passt,
            launcher,
            init,
            out,
            fetch,
        } => {
            let kernel_org = kernel.verified_kernel_org()?;
            let mirror = MirrorChoice { flag: fetch.mirror };
            let userland = usmol::fetch(&recipe, &mirror, fetch.update_lock, &cache)?;
            let kernel_fetched = match kernel_org {
                Some(_) => None,
                None => Some(usmol::fetch(
                    &kernel.kernel_recipe,
                    &mirror,
                    fetch.update_lock,
                    &cache,
                )?),
            };
            let epoch = usmol::source_date_epoch(&userland.lock)?;
            let rootfs = usmol::rootfs(&userland, epoch, &out.join("rootfs"), None)?;
            let options = kernel_options(&kernel, &mirror, fetch.update_lock, &cache, progress)?;
            let linux = match (&kernel_org, &kernel_fetched) {
                (Some(source), _) => usmol::kernel_from_kernel_org(source, &options, &cache_dir)?,
                (None, Some(fetched)) => usmol::kernel(fetched, &options, &cache_dir)?,
                (None, None) => unreachable!("the kernel recipe is fetched without kernel.org"),
            };
            let passt_source =
                usmol::fetch_source(&passt.passt_recipe, &mirror, fetch.update_lock, &cache)?;
            // passt always builds in the sysroot, even when the kernel uses
            // the host's tools.
            let sysroot = match &options.toolchain {
                usmol_kernel::Toolchain::Sysroot(root) => root.clone(),
                usmol_kernel::Toolchain::Host => {
                    let toolchain =
                        usmol::fetch(&kernel.toolchain_recipe, &mirror, fetch.update_lock, &cache)?;
                    usmol::toolchain_sysroot(&toolchain, cache.root())?
                }
            };
            let passt = usmol::passt(&passt_source, &passt.passt_patches, &sysroot, &cache_dir)?;
            let meta = ImageMeta {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                revision: std::env::var("USMOL_REVISION").unwrap_or_else(|_| "unknown".into()),
                source: env!("CARGO_PKG_REPOSITORY").to_owned(),
                epoch,
            };
            let image = usmol::image(
                &rootfs, &linux, &passt, &launcher, &init, &meta, &out, &cache_dir,
            )?;
            print_summary(&image);
        }
        Command::Push { layout, reference } => {
            let report = usmol_oci::push(&layout, &reference)
                .with_context(|| format!("push: {} to {reference}", layout.display()))?;
            println!("pushed {reference}: {}", report.manifest_digest);
        }
        Command::Export { source, dir } => {
            let runnable = usmol_oci::export(&source, &dir)
                .with_context(|| format!("export: {source} to {}", dir.display()))?;
            println!("exported {source}: run it with {}/run", runnable.display());
        }
    }
    Ok(())
}

fn kernel_options(
    args: &KernelArgs,
    mirror: &MirrorChoice,
    update_lock: bool,
    cache: &Cache,
    progress: bool,
) -> Result<KernelOptions> {
    let toolchain = if args.host_tools {
        usmol_kernel::Toolchain::Host
    } else {
        let fetched = usmol::fetch(&args.toolchain_recipe, mirror, update_lock, cache)?;
        usmol_kernel::Toolchain::Sysroot(usmol::toolchain_sysroot(&fetched, cache.root())?)
    };
    Ok(KernelOptions {
        fragments_dir: args.fragments.clone(),
        patches_dir: args.patches.clone(),
        toolchain,
        progress,
    })
}

fn print_summary(image: &usmol::ImageOutputs) {
    let d = |p: &PathBuf| p.display().to_string();
    println!("artifacts:");
    println!(
        "  runnable directory  {}      run: {}/run docker run --rm hello-world",
        d(&image.artifact_dir),
        d(&image.artifact_dir)
    );
    println!(
        "  plain tarball       {}      run: tar xf <it> && ./usmol/run",
        d(&image.plain_tarball)
    );
    println!(
        "  docker archive      {}      run: docker load -i <it> && docker run --rm {}",
        d(&image.docker_archive),
        image.tags.last().map_or("usmol:latest", String::as_str)
    );
    println!(
        "  OCI layout (zstd)   {}      push: usmol push <it> <registry>/<repo>:<tag>",
        d(&image.oci_layout)
    );
    println!(
        "  OCI layout (gzip)   {}      the same image for engines before Docker 23",
        d(&image.oci_layout_gzip)
    );
    println!(
        "  OCI archive         {}      skopeo copy / podman load",
        d(&image.oci_archive)
    );
    // Apptainer 1.4 reads a multi-tag layout by digest only.
    if let Ok((descriptor, _)) =
        usmol_oci::image::read_layout_manifest(&image.oci_layout, Some("latest"))
    {
        let layout = std::path::absolute(&image.oci_layout).unwrap_or(image.oci_layout.clone());
        println!(
            "  SIF (apptainer)     apptainer build usmol.sif oci:{}@{}",
            layout.display(),
            descriptor.digest
        );
    }
}
