package state

import (
	"runtime"
	"testing"
	"time"
	"weak"
)

// A noted hash is returned for the slice it was noted for, and only for
// a slice of the same start and length; HashBlob of other bytes is the
// real hash.
func TestNoteBlobHash(t *testing.T) {
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
	NoteBlobHash(b, 42)
	if got := HashBlob(b); got != 42 {
		t.Errorf("HashBlob of a noted slice: %d, want the noted 42", got)
	}
	if got := HashBlob(b[:BlobMin]); got == 42 {
		t.Error("a shorter slice of the same array got the noted hash")
	}
	small := make([]byte, BlobMin-1)
	NoteBlobHash(small, 7)
	if got := HashBlob(small); got == 7 {
		t.Error("a slice under BlobMin was noted")
	}
}

// The note of an array goes once the array is collected.
func TestNoteBlobHashForgotten(t *testing.T) {
	var k weak.Pointer[byte]
	func() {
		b := make([]byte, BlobMin)
		NoteBlobHash(b, 1)
		k = weak.Make(&b[0])
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		notes.Lock()
		_, ok := notes.m[k]
		notes.Unlock()
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the note of a collected array is still held")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
