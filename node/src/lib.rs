//! The MPREG worker node library.
