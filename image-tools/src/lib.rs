//! Switchback's vendor-side tools: the signed release bundle format shared
//! with the updater ([`bundle`], its own crate), the verbs of `image-tools` ([`ops`]), the
//! factory disk ([`mkdisk`]) with its EFI system partition ([`esp`]), and
//! the UEFI boot stage's keyring ([`stage`]) and Secure Boot signature
//! ([`secureboot`]), and a Linux boot stage as an EFI program ([`uki`]).

/// The bundle format, its reader and writer (the `switchback-bundle` crate).
pub use switchback_bundle as bundle;
pub mod arch;
pub mod cli;
pub mod esp;
pub mod mkdisk;
pub mod ops;
pub mod pe;
pub mod programs;
pub mod progress;
pub mod secureboot;
pub mod signers;
pub mod stage;
pub mod uki;
