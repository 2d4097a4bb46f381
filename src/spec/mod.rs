//! Loading and validating a bundle's config.json, and amphi's annotations.
