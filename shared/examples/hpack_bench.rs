//! Times the `:authority` shim on the header blocks kube-apiserver sends.
//!
//! `cargo run --release -p konnq-shared --example hpack_bench`
//!
//! grpc-go opens a new HTTP/2 connection for every Konnectivity dial, so each
//! dial costs one fresh [`AuthorityRewriter`] and one header block whose
//! strings Go's HPACK encoder Huffman-codes (it does so whenever that is
//! shorter). "first block" measures exactly that; "next block" a further
//! request on the same connection, which Go encodes almost entirely by index.
//! Prints the best of several rounds, in nanoseconds per header block.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use konnq_shared::h2authority::{AuthorityRewriter, PREFACE};
use konnq_shared::hpack::huffman;

const ROUNDS: usize = 7;
const BLOCKS_PER_ROUND: u32 = 20_000;

/// Go's choice for a string: Huffman-coded if strictly shorter.
fn put_string(out: &mut Vec<u8>, s: &str) {
    let len = huffman::encoded_len(s.as_bytes());
    let (flag, len) = if len < s.len() { (0x80, len) } else { (0x00, s.len()) };
    put_int(out, flag, 7, len);
    if flag != 0 {
        huffman::encode(s.as_bytes(), out);
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn put_int(out: &mut Vec<u8>, first: u8, prefix: u32, value: usize) {
    let limit = (1 << prefix) - 1;
    if value < limit {
        out.push(first | value as u8);
        return;
    }
    out.push(first | limit as u8);
    let mut rest = value - limit;
    while rest >= 0x80 {
        out.push(0x80 | (rest & 0x7f) as u8);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// The first request of a connection as grpc-go encodes it: static-table
/// hits indexed, everything else "literal with incremental indexing".
fn first_block() -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
    let named = [
        (4, "/ProxyService/Proxy"),                                                    // :path
        (1, "%2Fetc%2Fkubernetes%2Fkonnectivity-server%2Fkonnectivity-server.socket"), // :authority
        (31, "application/grpc"),                                                      // content-type
        (58, "grpc-go/1.72.1"),                                                        // user-agent
    ];
    for (index, value) in named {
        put_int(&mut b, 0x40, 6, index);
        put_string(&mut b, value);
    }
    b.push(0x40);
    put_string(&mut b, "te");
    put_string(&mut b, "trailers");
    b
}

/// The same request again: every field is now in the dynamic table
/// (indices 62..=66, newest first).
fn next_block() -> Vec<u8> {
    vec![0x83, 0x86, 0xc2, 0xc1, 0xc0, 0xbf, 0xbe]
}

fn headers_frame(stream_id: u32, block: &[u8]) -> Vec<u8> {
    let mut f = (block.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[0x1, 0x4]); // HEADERS, END_HEADERS
    f.extend_from_slice(&stream_id.to_be_bytes());
    f.extend_from_slice(block);
    f
}

fn connection_start() -> Vec<u8> {
    let mut input = PREFACE.to_vec();
    input.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]); // empty SETTINGS
    input.extend_from_slice(&headers_frame(1, &first_block()));
    input
}

/// Best of `ROUNDS` timings of `run`, which handles `BLOCKS_PER_ROUND` blocks.
fn best(mut run: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        run();
        best = best.min(start.elapsed());
    }
    best.as_nanos() as f64 / f64::from(BLOCKS_PER_ROUND)
}

fn main() {
    let start = connection_start();
    let mut out = BytesMut::with_capacity(4096);
    let first = best(|| {
        for _ in 0..BLOCKS_PER_ROUND {
            let mut rewriter = AuthorityRewriter::default();
            out.clear();
            rewriter.feed(black_box(&start), &mut out).expect("valid input");
            black_box(&out);
        }
    });
    let next_frame = headers_frame(3, &next_block());
    let mut rewriter = AuthorityRewriter::default();
    rewriter.feed(&start, &mut out).expect("valid input");
    let next = best(|| {
        for _ in 0..BLOCKS_PER_ROUND {
            out.clear();
            rewriter.feed(black_box(&next_frame), &mut out).expect("valid input");
            black_box(&out);
        }
    });
    assert_eq!(rewriter.rewritten_blocks(), 1 + u64::from(ROUNDS as u32 * BLOCKS_PER_ROUND));
    println!("first block on a new connection: {first:8.0} ns/block (fresh rewriter, Huffman strings)");
    println!("next block on the connection:    {next:8.0} ns/block (dynamic-table references)");
}
