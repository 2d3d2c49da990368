//! Runs every fuzz entry point over a few thousand deterministic pseudo-random inputs (random
//! bytes and mutations of realistic seeds), so CI exercises them on stable without libFuzzer.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rustronaut_contract::fuzzing;
use rustronaut_contract::fuzzing::Rng;
use serde_json::json;

const ROUNDS: usize = 3000;

#[test]
fn path_target() {
    let seeds: &[&str] = &[
        "/api/../admin",
        "/%2e%2e/admin",
        "//admin",
        "/api/%2e%2e/admin?x=1",
        "/a/./b/../c/",
        "/caf%C3%A9/%7euser",
        "/a%2Fb",
        "/a%5Cb",
        "/%00",
        "/x?y#z",
        "/%%",
        "/a;b=c/%3B",
    ];
    let alphabet = b"/.%2eEfF5cC0a?#;\\";
    let mut rng = Rng(0x5eed_0001);
    for i in 0..ROUNDS {
        let input = if i % 4 == 0 {
            rng.bytes(40)
        } else {
            rng.mutate(seeds[i % seeds.len()].as_bytes(), alphabet)
        };
        fuzzing::path(&input);
    }
}

#[test]
fn proxy_protocol_target() {
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x01, 0xbb]);
    v2.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let mut v2_6 = b"\r\n\r\n\0\r\nQUIT\n\x21\x21\x00\x24".to_vec();
    v2_6.extend_from_slice(&[0x20; 36]);
    let seeds: Vec<Vec<u8>> = vec![
        b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /".to_vec(),
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n".to_vec(),
        b"PROXY UNKNOWN\r\n".to_vec(),
        v2,
        v2_6,
        b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec(),
    ];
    let alphabet = b"PROXY TCP46UNKOW0123456789.:\r\n\x00\x11\x21\x31\xff";
    let mut rng = Rng(0x5eed_0002);
    for i in 0..ROUNDS {
        let input = if i % 4 == 0 {
            rng.bytes(64)
        } else {
            rng.mutate(&seeds[i % seeds.len()], alphabet)
        };
        fuzzing::proxy_protocol(&input);
    }
}

#[test]
fn jwt_target() {
    let ed = EncodingKey::from_ed_pem(include_bytes!("../fixtures/ed25519.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(include_bytes!("../fixtures/ec-p256.pem")).unwrap();
    let claims = json!({
        "iss": fuzzing::FUZZ_JWT_ISSUER, "aud": fuzzing::FUZZ_JWT_AUDIENCE, "sub": "s",
        "exp": fuzzing::FUZZ_JWT_NOW + 60, "groups": ["a"], "scope": "x y", "scp": ["z"],
    });
    let mut h_ed = Header::new(Algorithm::EdDSA);
    h_ed.kid = Some("ed".into());
    let mut h_ec = Header::new(Algorithm::ES256);
    h_ec.kid = Some("ec".into());
    // Well-formed tokens for the fuzz JWKS's kids, signed by other keys: they reach the
    // signature check (and fail there).
    let seeds: Vec<Vec<u8>> = vec![
        encode(&h_ed, &claims, &ed).unwrap().into_bytes(),
        encode(&h_ec, &claims, &ec).unwrap().into_bytes(),
        b"eyJhbGciOiJub25lIn0.e30.".to_vec(),
        serde_json::to_vec(&claims).unwrap(),
        br#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#.to_vec(),
    ];
    let alphabet = b"eyJhbGciOiJ.-_AZaz09{}\":,";
    let mut rng = Rng(0x5eed_0003);
    for i in 0..ROUNDS {
        let input = if i % 5 == 0 {
            rng.bytes(96)
        } else {
            rng.mutate(&seeds[i % seeds.len()], alphabet)
        };
        fuzzing::jwt(&input);
    }
}
