//! What the test suites of the workspace share, so that each part is
//! written once: a disk that loses power after a number of sectors
//! ([`cut`]), a scripted HTTP(S) server and a slow proxy ([`http`]), a real
//! goosebit fleet server ([`goosebit`]), a server in Eclipse hawkBit's own
//! shapes that checks every body against its OpenAPI ([`hawkbit`]), a
//! technician at `updater serve`'s page in headless chromium
//! ([`browser`]), and the guard of the tests that need root
//! ([`needs_root`]).

pub mod browser;
pub mod cut;
pub mod goosebit;
pub mod hawkbit;
pub mod http;

/// Whether a test that needs root (`why`: loop devices, namespaces, a
/// memory cgroup) can run. As root, always. Otherwise the test fails, so
/// that a run without root cannot pass by not testing, unless
/// `SWITCHBACK_SKIP_ROOT_TESTS=1` says that skipping is meant: then it says
/// SKIPPED and the test returns.
pub fn needs_root(why: &str) -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    if std::env::var_os("SWITCHBACK_SKIP_ROOT_TESTS").is_some_and(|v| v == "1") {
        eprintln!("SKIPPED (SWITCHBACK_SKIP_ROOT_TESTS=1): needs root for {why}");
        return false;
    }
    panic!(
        "this test needs root for {why}: run the suite as root (as CI does), or set SWITCHBACK_SKIP_ROOT_TESTS=1 to skip the root-only tests knowingly"
    );
}
