//! Fuzzes the decoders of untrusted bytes: gateway requests, forward requests, responses,
//! UDP frames and control messages. Run: `cargo +nightly fuzz run wire_formats`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rustronaut_tunnel::proto::{self, ForwardRequest, OpenRequest, Response};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((req, used))) = OpenRequest::decode(data) {
        assert!(used <= data.len());
        let again = req.encode().unwrap();
        assert_eq!(OpenRequest::decode(&again).unwrap().unwrap().0, req);
    }
    if let Ok(Some((req, used))) = ForwardRequest::decode(data) {
        assert!(used <= data.len());
        let again = req.encode().unwrap();
        assert_eq!(ForwardRequest::decode(&again).unwrap().unwrap().0, req);
    }
    let _ = Response::decode(data);
    let _ = proto::decode_control(data);
    let mut rest = data;
    while let Some((range, used)) = proto::decode_datagram(rest) {
        assert!(range.end <= rest.len());
        rest = &rest[used..];
    }
});
