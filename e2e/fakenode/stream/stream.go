// Package stream defines the deterministic byte stream served by fakenode's
// /bytes and /slow endpoints, so that tests in other modules can reproduce
// and verify a body given only its length and seed.
//
// The stream for a seed S is the output of Go's math/rand/v2 ChaCha8
// generator, read exclusively through its Read method, keyed with a 32-byte
// seed whose first 8 bytes are S in little-endian order and whose remaining
// 24 bytes are zero:
//
//	var key [32]byte
//	binary.LittleEndian.PutUint64(key[:8], S)
//	r := rand.NewChaCha8(key) // r.Read(p) yields the stream
//
// A body of N bytes is the first N bytes of that stream. Because only Read is
// used, the bytes do not depend on how the reads are chunked.
package stream

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"io"
	"math/rand/v2"
)

// New returns an endless reader producing the stream for seed.
func New(seed uint64) io.Reader {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:8], seed)
	return rand.NewChaCha8(key)
}

// Sum256 returns the SHA-256 of the first n bytes of the stream for seed.
func Sum256(seed uint64, n int64) [32]byte {
	h := sha256.New()
	if _, err := io.CopyN(h, New(seed), n); err != nil {
		panic(err) // unreachable: the stream never ends
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// Sum256Hex is Sum256 as lower-case hex, the form used in fakenode's
// X-Content-Sha256 header.
func Sum256Hex(seed uint64, n int64) string {
	sum := Sum256(seed, n)
	return hex.EncodeToString(sum[:])
}
