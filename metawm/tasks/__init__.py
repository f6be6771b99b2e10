"""Task families and suites: sample TaskSpecs for a split, build the environment for a spec."""
