//! `crate::base` of the engine as the fuzz target sees it: the real formats, and an error
//! type standing in for the engine's (the decoders only build `Corrupt`).

pub mod error {
    #[derive(Debug)]
    pub enum Error {
        Corrupt { path: std::path::PathBuf, reason: String },
    }

    impl Error {
        pub fn corrupt(path: impl Into<std::path::PathBuf>, reason: impl Into<String>) -> Self {
            Error::Corrupt { path: path.into(), reason: reason.into() }
        }
    }

    pub type Result<T, E = Error> = std::result::Result<T, E>;
}

#[path = "../../../engine/src/base/format.rs"]
pub mod format;
