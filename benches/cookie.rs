//! Cookie codec on the request path: sealing and opening a cookie, opening one signed with a
//! previous secret, and rejecting a tampered one.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use tether::session::cookie::{backend_tag, Claims, CookieCodec, SessionId};

fn claims() -> Claims {
    Claims {
        id: SessionId::random(),
        backend: backend_tag("app1"),
        issued_ms: 1_700_000_000_000,
        seen_ms: 1_700_000_060_000,
        binding: 0,
    }
}

fn bench_cookie(c: &mut Criterion) {
    let claims = claims();
    let codec = CookieCodec::new(b"current secret, 32 bytes or more", &[]);
    c.bench_function("cookie/encode", |b| {
        b.iter(|| black_box(codec.encode(black_box(&claims))))
    });
    c.bench_function("cookie/encode_decode", |b| {
        b.iter(|| black_box(codec.decode(&codec.encode(black_box(&claims)))))
    });

    let value = codec.encode(&claims);
    c.bench_function("cookie/decode", |b| {
        b.iter(|| black_box(codec.decode(black_box(&value))))
    });

    let old = CookieCodec::new(b"previous secret, also 32 bytes++", &[]);
    let old_value = old.encode(&claims);
    let rotated = CookieCodec::new(
        b"current secret, 32 bytes or more",
        &[b"previous secret, also 32 bytes++".to_vec()],
    );
    c.bench_function("cookie/decode_previous_secret", |b| {
        b.iter(|| black_box(rotated.decode(black_box(&old_value))))
    });

    let mut tampered = value.clone().into_bytes();
    tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("base64url is ASCII");
    c.bench_function("cookie/decode_tampered", |b| {
        b.iter(|| black_box(rotated.decode(black_box(&tampered))))
    });
}

criterion_group!(benches, bench_cookie);
criterion_main!(benches);
