//! What both isolations share: container ids, the lifecycle state machine,
//! the state store under `--root`, per-container locking and hooks.
