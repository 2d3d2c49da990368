//! The data-plane contract and the policy evaluator (work in progress).
#![forbid(unsafe_code)]
