//! The maintenance layer: GC, verify, and resuming their operations at open, as engine jobs:
//! functions over the shared [`Context`](crate::context::Context). Uses every layer before it;
//! not rp (restore points it reads through the context).

pub(crate) mod gc;
pub(crate) mod operations;
pub(crate) mod verify;
