package memlink

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sepal-fl/sepal/internal/bigbuf"
)

// ObjectFileMin is the size from which an object's content pushed by a
// node goes to the object file (state.Options.ObjectDir), not the heap.
const ObjectFileMin = 1 << 20

// content is an object's bytes: in memory, or an extent of the object file.
type content struct {
	mem []byte
	ext *extent
}

func (c content) size() int64 {
	if c.ext != nil {
		return c.ext.n
	}
	return int64(len(c.mem))
}

// acquire keeps the content's extent from reuse until release (a read
// begun under the store's lock finishes after it).
func (c content) acquire() {
	if c.ext != nil {
		c.ext.refs.Add(1)
	}
}

// release lets go of one hold of the extent: the object's own (when it is
// deleted) or a read's. The space is reused once none is left.
func (c content) release() {
	if c.ext != nil && c.ext.refs.Add(-1) == 0 {
		c.ext.f.release(c.ext.off, c.ext.n)
	}
}

// read returns the bytes: read from the object file into a buffer of
// bigbuf.Shared, lent to the answer that carries it (the codec gives it
// back once gRPC has written it). gone is true when the file was closed
// meanwhile (the store was closed: a deleted object's extent is kept until
// the reads that acquired it release it).
func (c content) read() (b []byte, gone bool, err error) {
	if c.ext == nil {
		return c.mem, false, nil
	}
	bp := bigbuf.Shared.Get(int(c.ext.n))
	if _, err := c.ext.f.f.ReadAt(*bp, c.ext.off); err != nil {
		bigbuf.Shared.Put(bp)
		if errors.Is(err, os.ErrClosed) {
			return nil, true, nil
		}
		return nil, false, fmt.Errorf("reading the object file: %w", err)
	}
	bigbuf.Shared.Lend(bp)
	return *bp, false, nil
}

// extent is n bytes at off in f, held by refs (the object and the reads
// under way).
type extent struct {
	f      *objectFile
	off, n int64
	refs   atomic.Int32
}

// objectFile is a file of the object directory that has no name: a stop
// or a crash leaves nothing behind. Contents are written into the space of
// contents deleted before them, so that the kernel overwrites page cache
// pages it has rather than allocating, and freeing, new ones for every
// object: a third of the CPU time of a file per object. The file keeps the
// size of the most bytes it held at once until the SuperLink stops.
type objectFile struct {
	f *os.File

	mu    sync.Mutex
	size  int64
	spans []span // free, sorted by offset, none touching another
}

type span struct{ off, n int64 }

// pageSize aligns extents, so that writes cover whole pages.
const pageSize = 4096

func roundPage(n int64) int64 { return (n + pageSize - 1) &^ (pageSize - 1) }

// alloc returns the offset of n free bytes (first fit, else at the end).
func (of *objectFile) alloc(n int64) int64 {
	n = roundPage(n)
	of.mu.Lock()
	defer of.mu.Unlock()
	for i, s := range of.spans {
		if s.n >= n {
			if s.n == n {
				of.spans = slices.Delete(of.spans, i, i+1)
			} else {
				of.spans[i] = span{s.off + n, s.n - n}
			}
			return s.off
		}
	}
	off := of.size
	if k := len(of.spans); k > 0 && of.spans[k-1].off+of.spans[k-1].n == of.size {
		off = of.spans[k-1].off // the free tail, grown
		of.spans = of.spans[:k-1]
	}
	of.size = off + n
	return off
}

// release returns n bytes at off to the free list, joined with neighbours.
func (of *objectFile) release(off, n int64) {
	n = roundPage(n)
	of.mu.Lock()
	defer of.mu.Unlock()
	i, _ := slices.BinarySearchFunc(of.spans, off, func(s span, off int64) int { return int(s.off - off) })
	of.spans = slices.Insert(of.spans, i, span{off, n})
	if i+1 < len(of.spans) && of.spans[i].off+of.spans[i].n == of.spans[i+1].off {
		of.spans[i].n += of.spans[i+1].n
		of.spans = slices.Delete(of.spans, i+1, i+2)
	}
	if i > 0 && of.spans[i-1].off+of.spans[i-1].n == of.spans[i].off {
		of.spans[i-1].n += of.spans[i].n
		of.spans = slices.Delete(of.spans, i, i+1)
	}
}

// objectShards is how many object files a store writes to, in turn:
// writers growing one file together wait on each other in the kernel (16
// writing 560 MiB into one new file took 3 CPU seconds, into 16 files
// 0.2).
const objectShards = 16

// objectFiles keeps large contents in the object files of dir. When a file
// cannot be made or written (a full disk, no descriptors left), the
// content stays in memory and the failure is logged at most once a minute.
type objectFiles struct {
	dir    string // "" keeps every content in memory
	min    int
	warned atomic.Int64 // unix seconds of the last warning
	next   atomic.Uint32

	mu    sync.Mutex
	files [objectShards]*objectFile // each made at its first content
}

// keep returns the content of b: in an object file when b is large and
// dir is set, else b itself.
func (s *Store) keep(b []byte) content {
	of := &s.files
	if of.dir == "" || len(b) < of.min {
		return content{mem: b}
	}
	c, err := of.write(b)
	if err != nil {
		now := time.Now().Unix()
		if last := of.warned.Load(); now-last >= 60 && of.warned.CompareAndSwap(last, now) {
			s.log.Warn("object kept in memory: the object file could not take it", "dir", of.dir, "bytes", len(b), "err", err)
		}
		return content{mem: b}
	}
	return c
}

func (ofs *objectFiles) write(b []byte) (content, error) {
	i := ofs.next.Add(1) % objectShards
	ofs.mu.Lock()
	if ofs.files[i] == nil {
		f, err := openObjectFile(ofs.dir)
		if err != nil {
			ofs.mu.Unlock()
			return content{}, err
		}
		ofs.files[i] = &objectFile{f: f}
	}
	of := ofs.files[i]
	ofs.mu.Unlock()
	e := &extent{f: of, off: of.alloc(int64(len(b))), n: int64(len(b))}
	if _, err := of.f.WriteAt(b, e.off); err != nil {
		of.release(e.off, e.n)
		return content{}, err
	}
	e.refs.Store(1)
	return content{ext: e}, nil
}

// close closes the object files; reads under way finish.
func (ofs *objectFiles) close() {
	ofs.mu.Lock()
	defer ofs.mu.Unlock()
	for _, of := range ofs.files {
		if of != nil {
			of.f.Close()
		}
	}
}

// openObjectFile opens a file of dir that has no name: O_TMPFILE where the
// file system has it, else a file removed as soon as created.
func openObjectFile(dir string) (*os.File, error) {
	f, err := os.OpenFile(dir, os.O_RDWR|unix.O_TMPFILE|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return f, nil
	}
	if f, err = os.CreateTemp(dir, ".sepal-objects-*"); err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// CheckObjectDir checks that objects can be kept in a file of dir: that it
// is a directory where a file can be created, written and removed.
func CheckObjectDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory", dir)
	}
	f, err := openObjectFile(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = f.Write([]byte("sepal"))
	return err
}
