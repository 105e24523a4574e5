//! The release this binary is: `chatd --version`, `chatd status`, a worker's Hello and the
//! metrics' `chatd_build_info` all show this one string.
//!
//! `CHATD_BUILD_VERSION` set at build time overrides the package version, so a second build of
//! the same sources can tell itself apart (the upgrade tests run one binary against another).

/// The release, e.g. `0.1.0`.
pub const VERSION: &str = match option_env!("CHATD_BUILD_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};
