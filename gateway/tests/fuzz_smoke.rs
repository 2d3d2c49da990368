//! Runs the gateway's fuzz entry points (`rustronaut_gateway::fuzzing`) over a few thousand
//! deterministic pseudo-random inputs (random bytes and mutations of realistic and hostile
//! seeds), so CI exercises them on stable without libFuzzer (`gateway/fuzz/` for that).

use rustronaut_gateway::fuzzing;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
    /// Flips, inserts, deletes, duplicates or truncates a few bytes of `seed`, biased
    /// towards the alphabet the seeds use.
    fn mutate(&mut self, seed: &[u8], alphabet: &[u8]) -> Vec<u8> {
        let mut v = seed.to_vec();
        for _ in 0..=self.below(4) {
            let pick = |r: &mut Rng| {
                if r.below(4) == 0 {
                    r.next() as u8
                } else {
                    alphabet[r.below(alphabet.len())]
                }
            };
            match self.below(5) {
                0 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v[i] = pick(self);
                }
                1 => {
                    let i = self.below(v.len() + 1);
                    let b = pick(self);
                    v.insert(i, b);
                }
                2 if !v.is_empty() => {
                    let i = self.below(v.len());
                    v.remove(i);
                }
                3 if !v.is_empty() => {
                    let i = self.below(v.len());
                    let j = i + self.below(v.len() - i);
                    let chunk = v[i..=j.min(v.len() - 1)].to_vec();
                    v.splice(i..i, chunk);
                }
                _ => v.truncate(self.below(v.len() + 1)),
            }
        }
        v
    }
}

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
