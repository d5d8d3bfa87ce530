package state

import (
	"runtime"
	"testing"
	"time"
	"weak"
)

// A noted hash is returned for the slice it was noted for, and only for
// a slice of the same start and length; the hash of other bytes is the
// real one.
func TestBlobHashes(t *testing.T) {
	var hs BlobHashes
	b := make([]byte, BlobMin+10)
	for i := range b {
		b[i] = byte(i)
	}
	real := HashBlob(b)
	h := NewBlobHash()
	h.Write(b[:7])
	h.Write(b[7:])
	if h.Sum64() != real {
		t.Fatal("NewBlobHash in pieces differs from HashBlob")
	}
	hs.NoteBlob(b, 42)
	if got := hs.Hash(b); got != 42 {
		t.Errorf("Hash of a noted slice: %d, want the noted 42", got)
	}
	if got := hs.Hash(b[:BlobMin]); got == 42 {
		t.Error("a shorter slice of the same array got the noted hash")
	}
	var other BlobHashes
	if got := other.Hash(b); got != real {
		t.Error("a note reached another store's hashes")
	}
	small := make([]byte, BlobMin-1)
	hs.NoteBlob(small, 7)
	if got := hs.Hash(small); got == 7 {
		t.Error("a slice under BlobMin was noted")
	}
}

// The note of an array goes once the array is collected.
func TestBlobHashesForgotten(t *testing.T) {
	var hs BlobHashes
	var k weak.Pointer[byte]
	func() {
		b := make([]byte, BlobMin)
		hs.NoteBlob(b, 1)
		k = weak.Make(&b[0])
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		hs.mu.Lock()
		_, ok := hs.m[k]
		hs.mu.Unlock()
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the note of a collected array is still held")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
