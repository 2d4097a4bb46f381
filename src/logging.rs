//! runc-compatible logging: `--log FILE` and `--log-format text|json`.
