//! cgroups v1 (including hybrid hosts) and v2 for the container isolation.
