//! The saga journal (being written).
