//! The MPREG broker.
