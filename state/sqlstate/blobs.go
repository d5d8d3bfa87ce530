package sqlstate

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"runtime"
	"sync"
	"time"
	"unsafe"
	"weak"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/internal/rules"
)

// Parameter arrays (Array.data of state.BlobMin bytes and more) are stored
// once by content: a row in blobs per SHA-256, its data in blob_chunks rows
// of chunkSize bytes (so that neither database holds a second whole copy of
// a 512 MiB array in memory while writing or reading it), and a task_blobs
// row per array of a task that holds it. blobs.refs counts those rows; the
// transaction that drops it to zero deletes the blob.
//
// A process keeps the arrays it wrote or read in a cache (blobCache): held
// firmly while this process knows tasks that reference them and they were
// used in the last cacheKeep, then weakly (the memory is the garbage
// collector's, and the cache finds it as long as a response still being
// sent holds it). So 16 nodes pulling the same TaskIns cost one read, and
// the codec finds an array the ServerApp pushes again without copying it.
// The content never changes, so a cache entry is never stale, whatever
// another process did to the database.

// chunkSize is the size of a blob_chunks row.
const chunkSize = 1 << 20

// collectEvery is how much of a large array is read between collections
// of the chunks read.
const collectEvery = 64 * chunkSize

// cacheKeep is how long the cache holds an array firmly after its last use.
const cacheKeep = time.Minute

type sum = [sha256.Size]byte

// blobRef is one array of a task stored apart: its place in the task's
// record set (rules.EachArray) and its content.
type blobRef struct {
	pos  int
	sum  sum
	data []byte // the array's data while pushed; nil when read from the table
}

// prepareBlobs finds the large arrays of rs, computes their SHA-256 (or
// takes it from the cache when the array is one the cache holds), and
// takes their data out of rs, so that rs is stored without them. It runs
// before the transaction: hashing 512 MiB takes a while.
func (c *blobCache) prepareBlobs(rs *flwrproto.RecordSet) []blobRef {
	var refs []blobRef
	rules.EachBlob(rs, func(pos int, a *flwrproto.Array) {
		s, ok := c.sumOf(a.Data)
		if !ok {
			s = sha256.Sum256(a.Data)
		}
		refs = append(refs, blobRef{pos: pos, sum: s, data: a.Data})
		a.Data = nil
	})
	return refs
}

// putBlobs records the arrays of task insID (kind 0: the TaskIns, 1: the
// TaskRes) in tx, writing the content of those the table does not hold.
func (s *State) putBlobs(ctx context.Context, tx *txn, insID string, kind int, refs []blobRef) error {
	for _, r := range refs {
		if err := s.putBlob(ctx, tx, r.sum, r.data); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO task_blobs (ins_id, kind, pos, hash) VALUES ($1, $2, $3, $4)`,
			insID, kind, r.pos, r.sum[:]); err != nil {
			return err
		}
	}
	return nil
}

// putBlob takes a reference on blob h (content data), writing its chunks
// when the table does not hold it yet.
func (s *State) putBlob(ctx context.Context, tx *txn, h sum, data []byte) error {
	var refCount int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO blobs (hash, size, refs) VALUES ($1, $2, 1)
		ON CONFLICT (hash) DO UPDATE SET refs = blobs.refs + 1
		RETURNING refs`, h[:], len(data)).Scan(&refCount); err != nil {
		return err
	}
	if refCount != 1 {
		return nil
	}
	if s.d.writeChunks != nil {
		return s.d.writeChunks(ctx, tx, h, data)
	}
	for n, off := 0, 0; off < len(data); n, off = n+1, off+chunkSize {
		if _, err := tx.ExecContext(ctx, `INSERT INTO blob_chunks (hash, n, data) VALUES ($1, $2, $3)`,
			h[:], n, data[off:min(off+chunkSize, len(data))]); err != nil {
			return err
		}
	}
	return nil
}

// releaseBlob drops a reference on blob h and deletes the blob when it
// was the last; gone reports that.
func (s *State) releaseBlob(ctx context.Context, tx *txn, h sum) (gone bool, err error) {
	var refs int64
	if err := tx.QueryRowContext(ctx, `UPDATE blobs SET refs = refs - 1 WHERE hash = $1 RETURNING refs`, h[:]).Scan(&refs); err != nil {
		return false, fmt.Errorf("array %x: %w", h[:8], err)
	}
	if refs > 0 {
		return false, nil
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM blob_chunks WHERE hash = $1`, h[:]); err != nil {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM blobs WHERE hash = $1`, h[:]); err != nil {
		return false, err
	}
	return true, nil
}

// getBlobs puts the arrays of task insID (kind as in putBlobs) back into
// rs, from the cache or the table.
func (s *State) getBlobs(ctx context.Context, tx *txn, insID string, kind int, rs *flwrproto.RecordSet) error {
	rows, err := tx.QueryContext(ctx, `SELECT pos, hash FROM task_blobs WHERE ins_id = $1 AND kind = $2 ORDER BY pos`, insID, kind)
	if err != nil {
		return err
	}
	var refs []blobRef
	for rows.Next() {
		var r blobRef
		var h []byte
		if err := rows.Scan(&r.pos, &h); err != nil {
			rows.Close()
			return err
		}
		copy(r.sum[:], h)
		refs = append(refs, r)
	}
	if err := rows.Close(); err != nil {
		return err
	}
	if len(refs) == 0 {
		return nil
	}
	byPos := make(map[int][]byte, len(refs))
	for _, r := range refs {
		d, err := s.cache.load(ctx, r.sum, func() ([]byte, error) { return s.readBlob(ctx, tx, r.sum) })
		if err != nil {
			return err
		}
		byPos[r.pos] = d
	}
	rules.EachArray(rs, func(pos int, a *flwrproto.Array) {
		if d, ok := byPos[pos]; ok {
			a.Data = d
			delete(byPos, pos)
		}
	})
	if len(byPos) != 0 {
		return fmt.Errorf("task %s: %d stored arrays have no place in its message", insID, len(byPos))
	}
	return nil
}

// readBlob reads one array from its chunks into a slice of its own.
func (s *State) readBlob(ctx context.Context, tx *txn, h sum) ([]byte, error) {
	var size int64
	if err := tx.QueryRowContext(ctx, `SELECT size FROM blobs WHERE hash = $1`, h[:]).Scan(&size); err != nil {
		return nil, fmt.Errorf("array %x: %w", h[:8], err)
	}
	out := make([]byte, 0, size)
	if s.d.readChunks != nil {
		out, err := s.d.readChunks(ctx, tx, h, out)
		if err != nil {
			return nil, err
		}
		if int64(len(out)) != size {
			return nil, fmt.Errorf("array %x: its chunks hold %d of its %d bytes", h[:8], len(out), size)
		}
		return out, nil
	}
	rows, err := tx.QueryContext(ctx, `SELECT data FROM blob_chunks WHERE hash = $1 ORDER BY n`, h[:])
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var b sql.RawBytes
		if err := rows.Scan(&b); err != nil {
			rows.Close()
			return nil, err
		}
		if int64(len(out)+len(b)) > size {
			rows.Close()
			return nil, fmt.Errorf("array %x: its chunks hold more than its %d bytes", h[:8], size)
		}
		out = append(out, b...)
		// The driver hands each chunk over in a slice of its own, garbage
		// once copied: for a large array, collect it as it goes, or it
		// piles up to a second copy of the array before the GC runs.
		if size > collectEvery && len(out)%collectEvery == 0 {
			runtime.GC()
		}
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if int64(len(out)) != size {
		return nil, fmt.Errorf("array %x: its chunks hold %d of its %d bytes", h[:8], len(out), size)
	}
	return out, nil
}

// dropBlobs deletes the task_blobs rows of task insID (both kinds, or only
// kind when kind >= 0) and releases their blobs; it returns the blobs
// deleted, which the cache may let go once tx commits.
func (s *State) dropBlobs(ctx context.Context, tx *txn, insID string, kind int) ([]sum, error) {
	q, args := `DELETE FROM task_blobs WHERE ins_id = $1 RETURNING hash`, []any{insID}
	if kind >= 0 {
		q, args = `DELETE FROM task_blobs WHERE ins_id = $1 AND kind = $2 RETURNING hash`, []any{insID, kind}
	}
	rows, err := tx.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	var hashes []sum
	for rows.Next() {
		var h []byte
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return nil, err
		}
		hashes = append(hashes, sum(h))
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	var gone []sum
	for _, h := range hashes {
		if g, err := s.releaseBlob(ctx, tx, h); err != nil {
			return nil, err
		} else if g {
			gone = append(gone, h)
		}
	}
	return gone, nil
}

// blobCache holds arrays this process wrote or read, by content. It is
// safe for concurrent use.
type blobCache struct {
	hashes state.BlobHashes // noted by the codec (BlobFinder's NoteBlob)
	mu     sync.Mutex
	bySum  map[sum]*cacheEntry
	byHash map[uint64][]*cacheEntry // state.HashBlob, for the codec
	now    func() time.Time
	// reads are the contents being read from the database (load): closed
	// when the read ended.
	reads map[sum]chan struct{}
}

type cacheEntry struct {
	sum  sum
	hash uint64
	n    int
	// firm holds the data while the entry is pinned; weak finds it after,
	// for as long as something else holds it.
	firm    []byte
	weak    weak.Pointer[byte]
	lastUse time.Time
}

func newBlobCache(now func() time.Time) *blobCache {
	return &blobCache{bySum: map[sum]*cacheEntry{}, byHash: map[uint64][]*cacheEntry{}, now: now, reads: map[sum]chan struct{}{}}
}

// load returns content h from the cache, or else reads it with read and
// puts it in: once for all the callers that ask at the same time (16
// nodes pulling one object through a replica that lacks it, on a
// database that serves them at once), the others waiting for the first
// and taking what it put. When the first fails, the next reads.
func (c *blobCache) load(ctx context.Context, h sum, read func() ([]byte, error)) ([]byte, error) {
	for {
		if d := c.get(h); d != nil {
			return d, nil
		}
		c.mu.Lock()
		if wait := c.reads[h]; wait != nil {
			c.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		c.reads[h] = done
		c.mu.Unlock()
		d, err := read()
		if err == nil {
			d = c.put(h, d)
		}
		c.mu.Lock()
		delete(c.reads, h)
		c.mu.Unlock()
		close(done)
		return d, err
	}
}

// data returns the entry's content, or nil once it was collected.
func (e *cacheEntry) data() []byte {
	if e.firm != nil {
		return e.firm
	}
	if p := e.weak.Value(); p != nil {
		return unsafe.Slice(p, e.n)
	}
	return nil
}

// put adds d (content h, never to be changed again) and holds it firmly;
// when the cache already has the content, it returns the held copy
// instead, so that one copy serves everyone.
func (c *blobCache) put(h sum, d []byte) []byte {
	if len(d) == 0 {
		return d
	}
	// Hashed before the lock: a pass over up to 512 MiB would block every
	// FindBlob meanwhile. (The callers put content the cache mostly lacks,
	// and an array the codec decoded has its hash noted already.)
	hash := c.hashes.Hash(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.bySum[h]; e != nil {
		if old := e.data(); old != nil {
			e.firm, e.lastUse = old, c.now()
			return old
		}
		c.removeLocked(e)
	}
	d = d[:len(d):len(d)]
	e := &cacheEntry{sum: h, hash: hash, n: len(d), firm: d, weak: weak.Make(&d[0]), lastUse: c.now()}
	c.bySum[h] = e
	c.byHash[e.hash] = append(c.byHash[e.hash], e)
	return d
}

// get returns the content h if the cache still has it, and holds it
// firmly again.
func (c *blobCache) get(h sum) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.bySum[h]
	if e == nil {
		return nil
	}
	d := e.data()
	if d == nil {
		c.removeLocked(e)
		return nil
	}
	e.firm, e.lastUse = d, c.now()
	return d
}

// sumOf returns the SHA-256 of d when the cache holds that very slice (the
// codec handed it out through FindBlob).
func (c *blobCache) sumOf(d []byte) (sum, bool) {
	if len(d) == 0 {
		return sum{}, false
	}
	h := c.hashes.Hash(d)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.byHash[h] {
		if e.n != len(d) {
			continue
		}
		if held := e.data(); held != nil && &held[0] == &d[0] {
			return e.sum, true
		}
	}
	return sum{}, false
}

// find is FindBlob: held content of length n and hash h for which eq is
// true.
func (c *blobCache) find(h uint64, n int, eq func([]byte) bool) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range c.byHash[h] {
		if e.n != n {
			continue
		}
		if d := e.data(); d != nil && eq(d) {
			e.firm, e.lastUse = d, c.now()
			return d
		}
	}
	return nil
}

// release lets go of deleted contents firmly held: others may still hold
// them while responses are sent.
func (c *blobCache) release(hs []sum) {
	if len(hs) == 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, h := range hs {
		if e := c.bySum[h]; e != nil {
			e.firm = nil
		}
	}
}

// sweep lets go of contents unused for cacheKeep and forgets those
// collected.
func (c *blobCache) sweep() {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.now()
	for _, e := range c.bySum {
		if e.firm != nil && now.Sub(e.lastUse) > cacheKeep {
			e.firm = nil
		}
		if e.data() == nil {
			c.removeLocked(e)
		}
	}
}

func (c *blobCache) removeLocked(e *cacheEntry) {
	delete(c.bySum, e.sum)
	list := c.byHash[e.hash]
	for i, o := range list {
		if o == e {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(c.byHash, e.hash)
	} else {
		c.byHash[e.hash] = list
	}
}
