package lb

import "strconv"

// FNV-1a 64-bit parameters (http://www.isthe.com/chongo/tech/comp/fnv/).
const (
	fnvOffset64 = 14695981039346656037
	fnvPrime64  = 1099511628211
)

// Hash returns a stable 64-bit hash of s: FNV-1a 64 followed by the MurmurHash3 64-bit
// finalizer, which spreads FNV's weakly mixed low-order changes over all bits. It is the
// same in every process and on every machine, unlike hash/maphash, so every sidecar maps a
// request key to the same place; the proxy should compute PickInfo.Hash with it (or with
// HashBytes). It does not allocate.
func Hash(s string) uint64 { return mix64(fnvString(fnvOffset64, s)) }

// HashBytes is Hash for a byte slice; HashBytes(b) == Hash(string(b)).
func HashBytes(b []byte) uint64 {
	h := uint64(fnvOffset64)
	for _, c := range b {
		h ^= uint64(c)
		h *= fnvPrime64
	}
	return mix64(h)
}

func fnvString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime64
	}
	return h
}

// hashSeeded hashes s with the FNV offset basis perturbed by seed, giving independent hash
// functions for Maglev's offset and skip.
func hashSeeded(s string, seed uint64) uint64 {
	return mix64(fnvString(fnvOffset64^mix64(seed), s))
}

// hashReplica hashes "<key>_<i>", the name of the i-th point of a host on the hash ring
// (Envoy hashes "<address>_<i>" the same way), without building the string.
func hashReplica(key string, i uint64) uint64 {
	var buf [20]byte
	h := fnvString(fnvOffset64, key)
	h ^= '_'
	h *= fnvPrime64
	for _, c := range strconv.AppendUint(buf[:0], i, 10) {
		h ^= uint64(c)
		h *= fnvPrime64
	}
	return mix64(h)
}

// mix64 is the MurmurHash3 fmix64 finalizer, a bijection on uint64 with full avalanche.
func mix64(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}
