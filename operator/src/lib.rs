//! The rustronaut operator (work in progress).
