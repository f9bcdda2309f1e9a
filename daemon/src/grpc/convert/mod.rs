//! Owns the one place where proto types meet engine types: records to messages, enums both
//! ways, request fields that name a resource to engine ids, and paging. Uses the engine and `errors`.

mod names;
mod paging;
mod records;

pub use names::*;
pub use paging::*;
pub use records::*;
