//! Runs the gateway's fuzz entry points (`rustronaut_gateway::fuzzing`) over a few thousand
//! deterministic pseudo-random inputs (random bytes and mutations of realistic and hostile
//! seeds), so CI exercises them on stable without libFuzzer (`gateway/fuzz/` for that).

use rustronaut_contract::fuzzing::Rng;
use rustronaut_gateway::fuzzing;

const ROUNDS: usize = 4000;

#[test]
fn request_head_target() {
    let seeds: &[&[u8]] = &[
        b"GET /public/a HTTP/1.1\r\nHost: app.acme.test\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nX-A: a\r\n b\r\n\r\n",
        b"GET /a HTTP/1.1\nHost: A.Acme.Test.:8443\n\n",
        b"GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /public/..;/admin HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"GET /public/%252e%252e/admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\nH: 8\r\n\r\n",
    ];
    let alphabet = b"\r\n :;.%2eHost-ContentLgh-TransfrEcodig0123456789chunked";
    let mut rng = Rng(0x5eed_0101);
    for i in 0..ROUNDS {
        let input = if i % 5 == 0 {
            rng.bytes(120)
        } else {
            rng.mutate(seeds[i % seeds.len()], alphabet)
        };
        fuzzing::request_head(&input);
    }
    // The seeds themselves, unmutated, including the refusals.
    for s in seeds {
        fuzzing::request_head(s);
    }
}

#[test]
fn cookies_target() {
    let seeds: &[&[u8]] = &[
        b"rtn_token=eyJhbGciOiJFUzI1NiJ9.e30.sig; theme=dark",
        b"__Host-rtn_session=v1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA; a=b\nrtn_token=\"x\"",
        b"__Host-rtn_login=v1.k1.AAAA; __Host-rtn_session=v1.k2.",
        b"a=1;;  ; rtn_token ; b=2",
        b"state=abc&code=xyz&state=def",
        b"Bearer   abc.def.ghi",
        b"v1.k1.",
    ];
    let alphabet = b"=;\" ._-v1k%&rtn_tokensio\nAZaz09";
    let mut rng = Rng(0x5eed_0102);
    for i in 0..ROUNDS {
        let input = if i % 5 == 0 {
            rng.bytes(96)
        } else {
            rng.mutate(seeds[i % seeds.len()], alphabet)
        };
        fuzzing::cookies(&input);
    }
}
