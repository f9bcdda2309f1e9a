//! Failpoints, compiled into every build and armed by the `CAIRN_FAILPOINTS` environment
//! variable (`name=action;name=action`, actions as in the `fail` crate), so the same points
//! serve engine tests and kill tests of the real daemon binary.
//!
//! `return(exit)` aborts the process at that point (a crash); any other `return` makes the
//! enclosing function fail with an injected error. Points sit on paths that run per pack or
//! per batch, never per guest I/O.

use crate::error::Error;

/// Arms the failpoints named in `CAIRN_FAILPOINTS`, once per process.
pub(crate) fn arm_from_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(spec) = std::env::var("CAIRN_FAILPOINTS") else { return };
        for item in spec.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let Some((name, action)) = item.split_once('=') else {
                tracing::error!(item, "ignoring malformed CAIRN_FAILPOINTS entry (want name=action)");
                continue;
            };
            match fail::cfg(name.trim(), action.trim()) {
                Ok(()) => tracing::warn!(name, action, "failpoint armed"),
                Err(e) => tracing::error!(name, action, error = %e, "ignoring bad failpoint action"),
            }
        }
    });
}

/// What an armed `return` failpoint does.
pub(crate) fn fire(name: &'static str, arg: Option<String>) -> Error {
    if arg.as_deref() == Some("exit") {
        tracing::error!(failpoint = name, "failpoint: aborting the process");
        std::process::abort();
    }
    Error::Injected(name)
}

/// Declares a failpoint in a function returning `crate::Result<_>`.
#[macro_export]
#[doc(hidden)]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |arg| Err($crate::failpoint::fire($name, arg)))
    };
}
