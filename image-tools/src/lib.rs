//! Switchback's vendor-side tools: the signed release bundle format shared
//! with the updater ([`bundle`], its own crate), the verbs of `image-tools` ([`ops`]), the
//! factory disk ([`mkdisk`]) with its EFI system partition ([`esp`]), and
//! the boot stage as an EFI program ([`uki`]).

/// The bundle format, its reader and writer (the `switchback-bundle` crate).
pub use switchback_bundle as bundle;
pub mod arch;
pub mod cli;
pub mod esp;
pub mod mkdisk;
pub mod ops;
pub mod progress;
pub mod uki;

/// The process exit code for an error: the code of the typed error inside
/// it when there is one, 1 otherwise.
pub fn exit_code(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| {
            c.downcast_ref::<bundle::BundleError>()
                .map(bundle::BundleError::exit_code)
                .or_else(|| {
                    c.downcast_ref::<bootctl::Error>()
                        .map(bootctl::Error::exit_code)
                })
        })
        .unwrap_or(1)
}
