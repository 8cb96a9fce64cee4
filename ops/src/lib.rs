//! Operations plumbing shared by every Baton binary (placeholder; being written).
#![forbid(unsafe_code)]
