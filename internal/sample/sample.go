// Package sample implements coat-sample, the lab's stateful workload: a TCP
// echo server that verifies a deterministic byte pattern, a streaming client
// that measures client-visible stalls across a live migration, and a small
// control protocol for inspecting and mutating the server's state.
package sample

// patternMod is the modulus of the stream pattern (a prime, so that the
// pattern does not line up with power-of-two buffer sizes).
const patternMod = 251

// PatternByte returns the expected stream byte at offset:
// byte((offset*7+13) % 251).
func PatternByte(offset int64) byte {
	return byte((uint64(offset)%patternMod*7 + 13) % patternMod)
}

// FillPattern fills b with the stream pattern starting at offset.
func FillPattern(b []byte, offset int64) {
	v := int(PatternByte(offset))
	for i := range b {
		b[i] = byte(v)
		v += 7
		if v >= patternMod {
			v -= patternMod
		}
	}
}

// CheckPattern compares b with the stream pattern starting at offset. It
// returns the number of mismatching bytes and the index in b of the first
// mismatch, or -1 if b matches.
func CheckPattern(b []byte, offset int64) (mismatches int, first int) {
	first = -1
	v := int(PatternByte(offset))
	for i, c := range b {
		if c != byte(v) {
			mismatches++
			if first < 0 {
				first = i
			}
		}
		v += 7
		if v >= patternMod {
			v -= patternMod
		}
	}
	return mismatches, first
}
