//! `amphi vm ...`: tools for the VM isolation.

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum VmCommand {}
