//! The state file from any bytes: never a panic; what loads is settled
//! against the disk's flags (as after a crash), saved, and reads back equal.
#![no_main]
use bootctl::BootAttrs;
use libfuzzer_sys::fuzz_target;
use updater::state::StateFile;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Ok(dir) = tempfile_dir() else {
        return;
    };
    let path = dir.join("state.json");
    let mut state = StateFile::from_read(path.clone(), Ok(rest.to_vec()));
    let attrs = [
        BootAttrs::decode(u64::from(flags) << 48),
        BootAttrs::decode(u64::from(flags.rotate_left(4)) << 48),
    ];
    if state.refuse_newer().is_err() {
        assert!(state.save().is_err(), "a newer state was overwritten");
        return;
    }
    state.state.settle_from_flags(attrs);
    state.save().expect("saving a loaded state");
    let again = StateFile::load(&dir);
    assert!(again.warning.is_none(), "{:?}", again.warning);
    assert_eq!(again.state.security_floor, state.state.security_floor);
    assert_eq!(again.state.last_install, state.state.last_install);
    assert_eq!(again.state.slots, state.state.slots);
    let _ = std::fs::remove_dir_all(&dir);
});

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("switchback-fuzz-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
