//! The host <-> guest agent protocol: the one definition both the VMM side
//! and `amphi-agent` use.
