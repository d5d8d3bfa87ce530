package memstate

import (
	"bytes"
	"sync"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/rules"
)

// blob is one distinct Array.data content held by the state; refs counts
// the stored tasks that carry it. data is never modified.
type blob struct {
	data []byte
	hash uint64
	refs int
}

// preparedBlob is an array whose data was hashed outside the state lock.
type preparedBlob struct {
	arr  *flwrproto.Array
	hash uint64
}

// interner holds identical parameter arrays once, content-addressed
// (state.HashBlob, then a full compare), with reference counts. It is safe
// for concurrent use.
type interner struct {
	mu    sync.Mutex
	m     map[uint64][]*blob
	n     int
	bytes int64
}

func newInterner() *interner { return &interner{m: map[uint64][]*blob{}} }

// prepareBlobs hashes every Array.data of rs worth interning, with the
// hashes the codec noted in hs.
func prepareBlobs(hs *state.BlobHashes, rs *flwrproto.RecordSet) []preparedBlob {
	var out []preparedBlob
	rules.EachBlob(rs, func(_ int, a *flwrproto.Array) {
		out = append(out, preparedBlob{arr: a, hash: hs.Hash(a.Data)})
	})
	return out
}

// intern replaces each prepared array's data by the held copy of the same
// content, adding the content when it is new, and returns the blobs the
// caller now holds a reference to.
func (in *interner) intern(ps []preparedBlob) []*blob {
	if len(ps) == 0 {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]*blob, 0, len(ps))
	for _, p := range ps {
		b := in.lookupLocked(p.hash, p.arr.Data)
		if b == nil {
			d := p.arr.Data
			b = &blob{data: d[:len(d):len(d)], hash: p.hash}
			in.m[p.hash] = append(in.m[p.hash], b)
			in.n++
			in.bytes += int64(len(d))
		}
		b.refs++
		p.arr.Data = b.data
		out = append(out, b)
	}
	return out
}

func (in *interner) lookupLocked(h uint64, d []byte) *blob {
	for _, b := range in.m[h] {
		if len(b.data) != len(d) {
			continue
		}
		if len(d) > 0 && &b.data[0] == &d[0] || bytes.Equal(b.data, d) {
			return b
		}
	}
	return nil
}

// find returns held content with hash h and length n for which eq is true,
// or nil.
func (in *interner) find(h uint64, n int, eq func([]byte) bool) []byte {
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, b := range in.m[h] {
		if len(b.data) == n && eq(b.data) {
			return b.data
		}
	}
	return nil
}

// release drops one reference to each blob; content nobody holds is
// forgotten (and freed by the garbage collector once no response still
// being sent refers to it).
func (in *interner) release(bs []*blob) {
	if len(bs) == 0 {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for _, b := range bs {
		b.refs--
		if b.refs > 0 {
			continue
		}
		list := in.m[b.hash]
		for i, o := range list {
			if o == b {
				list = append(list[:i], list[i+1:]...)
				break
			}
		}
		if len(list) == 0 {
			delete(in.m, b.hash)
		} else {
			in.m[b.hash] = list
		}
		in.n--
		in.bytes -= int64(len(b.data))
	}
}

func (in *interner) size() (int, int64) {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.n, in.bytes
}
