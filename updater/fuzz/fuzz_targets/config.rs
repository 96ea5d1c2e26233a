//! The device config from any bytes: a clear error or a config whose every
//! bound holds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use updater::config::{Config, MAX_SECONDS};

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Config::parse(data, Path::new("/fuzz/config.json")) {
        assert!(c.keyring.is_absolute() && c.data_dir.is_absolute());
        assert!((1..=15).contains(&c.boot_tries));
        assert!((1..=MAX_SECONDS).contains(&c.health.deadline_s));
        assert!((1..=MAX_SECONDS).contains(&c.migration_timeout_s));
        for check in &c.health.checks {
            assert!(!check.command.is_empty());
            assert!((1..=MAX_SECONDS).contains(&check.timeout_s));
        }
    }
});
