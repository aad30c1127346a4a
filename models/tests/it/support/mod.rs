//! Helpers shared by the modules of the models test binary.

pub mod oggbuild;
