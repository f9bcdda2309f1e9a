//! The bearer token both ends of the API agree on: the header that carries it
//! (`authorization: Bearer <token>`) and the token file that holds it (cairnd's
//! `--grpc-token-file`, the CLI's `--token-file`).

use std::path::{Path, PathBuf};

/// The metadata key (HTTP/2 header) that carries the token.
pub const AUTHORIZATION: &str = "authorization";
/// What precedes the token in the header's value.
pub const BEARER_PREFIX: &str = "Bearer ";

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading gRPC token file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gRPC token file {path} must hold one line of printable ASCII (no spaces), and not be empty")]
    Malformed { path: PathBuf },
}

/// Reads a token file: one line of visible ASCII; surrounding whitespace is dropped.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read { path: path.into(), source })?;
    let token = text.trim();
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Malformed { path: path.into() });
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_one_printable_line() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "abc123\n").unwrap();
        assert_eq!(read_token(&good).unwrap(), "abc123");
        for (name, text) in [("empty", "\n"), ("spaced", "two words\n")] {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            let e = read_token(&path).unwrap_err().to_string();
            assert!(e.contains(name), "{e}");
        }
        let e = read_token(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
