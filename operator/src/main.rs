//! `rustronaut-operator` (work in progress: the controllers are being written).

fn main() {}
