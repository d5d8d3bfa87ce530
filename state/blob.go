package state

import (
	"hash"
	"hash/maphash"
	"runtime"
	"sync"
	"weak"
)

// blobSeed is shared by every user of HashBlob in the process, so that the
// codec can hash bytes as they arrive and a State can look them up.
var blobSeed = maphash.MakeSeed()

// HashBlob is the hash a BlobFinder is asked with: maphash with a seed of
// this process (fast, not stable across processes: never store it).
func HashBlob(b []byte) uint64 { return maphash.Bytes(blobSeed, b) }

// BlobHashes are hashes computed while the bytes were at hand (the codec
// hashes an array as it decodes it, and tells the state, BlobFinder's
// NoteBlob), keyed by the array, so that the state need not read its
// megabytes again to hash it. An entry goes when its array is collected.
// A store embeds one to implement NoteBlob. The zero value is ready to
// use; its methods are safe for concurrent use.
type BlobHashes struct {
	mu sync.Mutex
	m  map[weak.Pointer[byte]]note
}

type note struct {
	len  int
	hash uint64
}

// NoteBlob records that HashBlob(b) is h, for b of BlobMin bytes or more,
// whose content must never change afterwards (held arrays never do).
func (n *BlobHashes) NoteBlob(b []byte, h uint64) {
	if len(b) < BlobMin {
		return
	}
	p := &b[0]
	k := weak.Make(p)
	n.mu.Lock()
	if n.m == nil {
		n.m = map[weak.Pointer[byte]]note{}
	}
	_, had := n.m[k]
	n.m[k] = note{len: len(b), hash: h}
	n.mu.Unlock()
	if !had {
		runtime.AddCleanup(p, func(k weak.Pointer[byte]) {
			n.mu.Lock()
			delete(n.m, k)
			n.mu.Unlock()
		}, k)
	}
}

// Hash returns HashBlob(b): the hash noted for b, or computed.
func (n *BlobHashes) Hash(b []byte) uint64 {
	if len(b) >= BlobMin {
		n.mu.Lock()
		e, ok := n.m[weak.Make(&b[0])]
		n.mu.Unlock()
		if ok && e.len == len(b) {
			return e.hash
		}
	}
	return HashBlob(b)
}

// NewBlobHash returns a hash that computes HashBlob of the bytes written to
// it, in as many pieces as they come.
func NewBlobHash() hash.Hash64 {
	h := &maphash.Hash{}
	h.SetSeed(blobSeed)
	return h
}
