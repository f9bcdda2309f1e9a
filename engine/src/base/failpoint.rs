//! Failpoints, compiled in only with the `failpoints` cargo feature (test builds: the e2e
//! tests' dev-dependencies and the engine's own turn it on; a release build carries none) and
//! armed by the `CAIRN_FAILPOINTS` environment variable (`name=action;name=action`, actions
//! as in the `fail` crate), so the same points serve engine tests and kill tests of the real
//! daemon binary. A build without the feature warns and ignores `CAIRN_FAILPOINTS`.
//!
//! `return(exit)` aborts the process at that point (a crash); `return(hold)` logs "failpoint
//! holding" and stops the thread there for good, so a test can cut the power (or kill the
//! process) with the engine exactly at that edge; any other `return` makes the enclosing
//! function fail with an injected error. Points sit on paths that run per pack or
//! per batch, never per guest I/O.

/// Arms the failpoints named in `CAIRN_FAILPOINTS`, once per process.
pub(crate) fn arm_from_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(spec) = std::env::var("CAIRN_FAILPOINTS") else { return };
        arm(&spec);
    });
}

#[cfg(feature = "failpoints")]
fn arm(spec: &str) {
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
}

#[cfg(not(feature = "failpoints"))]
fn arm(spec: &str) {
    tracing::warn!(failpoints = spec, "ignoring CAIRN_FAILPOINTS: this build has no failpoints");
}

/// What an armed `return` failpoint does.
#[cfg(feature = "failpoints")]
pub(crate) fn fire(name: &'static str, arg: Option<String>) -> crate::base::error::Error {
    if arg.as_deref() == Some("exit") {
        tracing::error!(failpoint = name, "failpoint: aborting the process");
        std::process::abort();
    }
    if arg.as_deref() == Some("hold") {
        tracing::error!(failpoint = name, "failpoint holding until the process is killed");
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
    crate::base::error::Error::Injected(name)
}

/// Declares a failpoint in a function returning `crate::Result<_>`.
#[cfg(feature = "failpoints")]
#[macro_export]
#[doc(hidden)]
macro_rules! failpoint {
    ($name:literal) => {
        fail::fail_point!($name, |arg| Err($crate::base::failpoint::fire($name, arg)))
    };
}

/// Without the feature a failpoint is nothing.
#[cfg(not(feature = "failpoints"))]
#[macro_export]
#[doc(hidden)]
macro_rules! failpoint {
    ($name:literal) => {};
}

#[cfg(all(test, feature = "failpoints"))]
mod tests {
    use crate::base::error::{Error, ErrorKind};

    fn guarded() -> crate::Result<()> {
        crate::failpoint!("failpoint::test");
        Ok(())
    }

    #[test]
    fn an_armed_return_failpoint_fails_its_function_with_an_injected_error() {
        assert!(guarded().is_ok());
        super::arm("failpoint::test=1*return->off");
        let err = guarded().unwrap_err();
        assert!(matches!(err, Error::Injected("failpoint::test")), "{err}");
        assert_eq!(err.kind(), ErrorKind::Io);
        assert!(guarded().is_ok(), "1*return fires once");
    }
}
