package codec

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"hash"
	"strings"
	"sync"
	"unsafe"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink/internal/wire"
)

// Decoding a message that holds large bytes fields, straight from the
// frames gRPC received (a mem.BufferSlice), without first joining them into
// one buffer and without proto.Unmarshal copying every bytes field again:
//
//  1. compact walks the frames with the message's descriptor and writes a
//     small copy of the message in which each large bytes value is
//     replaced by a placeholder (a per-process random marker and an index);
//     each large value is copied once from the frames into a slice of its
//     own, or not copied at all when the state already holds the same
//     content;
//  2. proto.Unmarshal decodes the small copy (so validation, UTF-8 checks
//     and errors are proto's own);
//  3. patch puts the large values in place of the placeholders.
//
// Anything unexpected (a malformed message, a group) falls back to
// proto.Unmarshal of the joined frames, which reports the error as usual.

// marker starts every placeholder; 16 random bytes no sender can guess.
var marker = func() [16]byte {
	var m [16]byte
	if _, err := rand.Read(m[:]); err != nil {
		panic(err)
	}
	return m
}()

const placeholderLen = len(marker) + 4

var errFallback = errors.New("fall back to proto.Unmarshal")

// maxCompactDepth bounds the nesting compact follows. Each level copies
// what it compacted into its parent, so a message nested d deep costs d
// times its size: a peer's tree 5,000 deep in 350 KB would cost 1.7 GB of
// copying. Flower's messages nest less than 10 deep; deeper ones fall
// back to proto.Unmarshal, which is linear.
const maxCompactDepth = 32

func (c *Codec) unmarshal(data mem.BufferSlice, m proto.Message) error {
	if data.Len() < c.bigMin {
		return proto.Unmarshal(data.Materialize(), m)
	}
	return c.decode(newFrames(data), m, data.Materialize)
}

// unmarshalOwned decodes buf, a captured request that belongs to the
// codec from now on, into m: its large bytes fields are slices of buf
// rather than copies (see aliased).
func (c *Codec) unmarshalOwned(buf []byte, m proto.Message) error {
	if len(buf) < c.bigMin {
		return proto.Unmarshal(buf, m)
	}
	f := &frames{bufs: [][]byte{buf}, offs: []int{0}, n: len(buf), alias: true}
	return c.decode(f, m, func() []byte { return buf })
}

// decode decodes the message in f into m, or the bytes whole returns
// with proto.Unmarshal when anything is unexpected.
func (c *Codec) decode(f *frames, m proto.Message, whole func() []byte) error {
	var bigs [][]byte
	kind := arraysHeld
	switch {
	case c.o.Opaque != nil && c.o.Opaque(m):
		kind = opaque
	case c.o.Fresh != nil && c.o.Fresh(m):
		kind = arraysFresh
	}
	small, err := c.compact(f, m.ProtoReflect().Descriptor(), 0, f.n, nil, &bigs, kind, 0)
	if err == nil && len(bigs) > 0 {
		c.unalias(f, bigs)
		if err = proto.Unmarshal(small, m); err == nil {
			if n := patch(m.ProtoReflect(), bigs); n != len(bigs) {
				proto.Reset(m)
				err = errFallback
			}
		}
	} else if err == nil {
		err = proto.Unmarshal(small, m) // nothing large after all
	}
	if err != nil {
		proto.Reset(m)
		return proto.Unmarshal(whole(), m)
	}
	return nil
}

// frames addresses the bytes of a BufferSlice by absolute position.
type frames struct {
	bufs [][]byte
	offs []int // start of each buffer
	n    int

	// alias: the one buffer belongs to the codec, and large values are
	// slices of it (aliased), distinct ones counted in aliasedBytes.
	alias        bool
	seen         map[uint64][][]byte
	sums         map[*byte]uint64 // the hash of each slice in seen
	aliasedBytes int
}

func newFrames(data mem.BufferSlice) *frames {
	f := &frames{}
	for _, b := range data {
		d := b.ReadOnlyData()
		if len(d) == 0 {
			continue
		}
		f.bufs = append(f.bufs, d)
		f.offs = append(f.offs, f.n)
		f.n += len(d)
	}
	return f
}

// find returns the buffer index holding pos.
func (f *frames) find(pos int) int {
	lo, hi := 0, len(f.offs)-1
	for lo < hi {
		mid := (lo + hi + 1) / 2
		if f.offs[mid] <= pos {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// each calls fn with the pieces of [pos, pos+n) in order.
func (f *frames) each(pos, n int, fn func([]byte) bool) {
	if n == 0 {
		return
	}
	for i := f.find(pos); n > 0 && i < len(f.bufs); i++ {
		b := f.bufs[i][pos-f.offs[i]:]
		if len(b) > n {
			b = b[:n]
		}
		if !fn(b) {
			return
		}
		pos += len(b)
		n -= len(b)
	}
}

func (f *frames) appendTo(dst []byte, pos, n int) []byte {
	f.each(pos, n, func(b []byte) bool { dst = append(dst, b...); return true })
	return dst
}

// varint reads a varint at pos, within end; n < 0 when malformed.
func (f *frames) varint(pos, end int) (uint64, int) {
	var buf [binary.MaxVarintLen64]byte
	k := min(len(buf), end-pos)
	if k <= 0 {
		return 0, -1
	}
	i := f.find(pos)
	if b := f.bufs[i][pos-f.offs[i]:]; len(b) >= k {
		return protowire.ConsumeVarint(b[:k])
	}
	got := f.appendTo(buf[:0], pos, k)
	return protowire.ConsumeVarint(got)
}

func (f *frames) hash(pos, n int) uint64 {
	h := state.NewBlobHash()
	f.each(pos, n, func(b []byte) bool { h.Write(b); return true })
	return h.Sum64()
}

func (f *frames) equal(d []byte, pos int) bool {
	eq := true
	f.each(pos, len(d), func(b []byte) bool {
		eq = bytes.Equal(d[:len(b)], b)
		d = d[len(b):]
		return eq
	})
	return eq
}

// bigKind says what the large bytes values of a message are.
type bigKind int

const (
	// arraysHeld are arrays the state most likely holds already:
	// parameters the ServerApp sends to every node.
	arraysHeld bigKind = iota
	// arraysFresh are arrays most likely new: a node's result.
	arraysFresh
	// opaque are contents the state does not look up by their
	// state.HashBlob: Flower 1.29.0's objects.
	opaque
)

// large returns the bytes value at [pos, pos+n): the state's copy when
// it holds the same content, otherwise a new slice of its own (or, from
// a buffer the codec owns, a slice of it). Its hash (state.HashBlob) is
// noted for the state, which would otherwise read the array once more to
// intern it.
//
// An opaque value is taken as it is: not hashed, looked up or noted.
// Fresh content (a node's result) is copied and hashed in one pass, each
// frame hashed while it is in the cache, and looked up after. Other
// arrays (parameters the ServerApp sends to every node, held after the
// first) are hashed and looked up first, and copied only when the state
// does not hold them.
func (c *Codec) large(f *frames, pos, n int, kind bigKind) []byte {
	if kind == opaque {
		if f.alias {
			f.aliasedBytes += n
			return f.bufs[0][pos : pos+n : pos+n]
		}
		return f.copyOut(pos, n, nil)
	}
	if f.alias {
		return c.aliased(f, pos, n)
	}
	if c.in == nil {
		return f.copyOut(pos, n, nil)
	}
	if kind == arraysFresh {
		h := state.NewBlobHash()
		d := f.copyOut(pos, n, h)
		sum := h.Sum64()
		if held := c.in.FindBlob(sum, n, func(x []byte) bool { return bytes.Equal(x, d) }); held != nil {
			return held
		}
		c.note(d, sum)
		return d
	}
	h := f.hash(pos, n)
	if d := c.in.FindBlob(h, n, func(d []byte) bool { return f.equal(d, pos) }); d != nil {
		c.note(d, h)
		return d
	}
	d := f.copyOut(pos, n, nil)
	c.note(d, h)
	return d
}

// aliased returns the bytes value at [pos, pos+n) of a buffer the codec
// owns: the state's copy when it holds the same content, the value
// already returned for the same content earlier in the message (a
// ServerApp's PushTaskIns carries the model once per node), or else a
// slice of the buffer, whose hash is noted for the state.
func (c *Codec) aliased(f *frames, pos, n int) []byte {
	d := f.bufs[0][pos : pos+n : pos+n]
	h := state.NewBlobHash()
	h.Write(d)
	sum := h.Sum64()
	if c.in != nil {
		if held := c.in.FindBlob(sum, n, func(x []byte) bool { return bytes.Equal(x, d) }); held != nil {
			return held
		}
	}
	for _, prev := range f.seen[sum] {
		if bytes.Equal(prev, d) {
			return prev
		}
	}
	if f.seen == nil {
		f.seen = map[uint64][][]byte{}
	}
	f.seen[sum] = append(f.seen[sum], d)
	if f.sums == nil {
		f.sums = map[*byte]uint64{}
	}
	f.sums[&d[0]] = sum
	f.aliasedBytes += n
	c.note(d, sum)
	return d
}

// unalias replaces the slices of an owned buffer in bigs by copies of
// their own when they are less than half of it: the arrays outlive the
// request (the state keeps them), and slices keep the whole buffer in
// memory, duplicates and all.
func (c *Codec) unalias(f *frames, bigs [][]byte) {
	if !f.alias || f.aliasedBytes == 0 || f.aliasedBytes*2 >= f.n {
		return
	}
	buf := f.bufs[0]
	copies := map[*byte][]byte{}
	for i, b := range bigs {
		if len(b) == 0 || !within(buf, b) {
			continue
		}
		cp, ok := copies[&b[0]]
		if !ok {
			cp = f.copyOut(int(uintptr(unsafe.Pointer(&b[0]))-uintptr(unsafe.Pointer(&buf[0]))), len(b), nil)
			if sum, ok := f.sums[&b[0]]; ok { // opaque values have none
				c.note(cp, sum)
			}
			copies[&b[0]] = cp
		}
		bigs[i] = cp
	}
}

// within reports whether b is a slice of buf.
func within(buf, b []byte) bool {
	start := uintptr(unsafe.Pointer(&buf[0]))
	p := uintptr(unsafe.Pointer(&b[0]))
	return p >= start && p+uintptr(len(b)) <= start+uintptr(len(buf))
}

// copyOut returns a new slice holding [pos, pos+n), written into each
// piece at a time while h (if not nil) hashes it, so that the piece is
// read from memory once.
//
// The slice is not cleared before it is written: strings.Builder grows
// with the runtime's uncleared allocation, which spares clearing every
// received array once more (about 5% of the CPU time of relaying them).
// The returned bytes alias the builder's string and must never be
// modified, which no array the codec decodes ever is.
func (f *frames) copyOut(pos, n int, h hash.Hash) []byte {
	wire.CollectFor(n)
	var b strings.Builder
	b.Grow(n)
	f.each(pos, n, func(p []byte) bool {
		if h != nil {
			h.Write(p)
		}
		b.Write(p)
		return true
	})
	s := b.String()
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// compact appends to out the message of type md found at [pos, end), with
// large bytes values replaced by placeholders and collected in bigs;
// depth is how deep it is nested in the message decoded (past
// maxCompactDepth: errFallback).
func (c *Codec) compact(f *frames, md protoreflect.MessageDescriptor, pos, end int, out []byte, bigs *[][]byte, kind bigKind, depth int) ([]byte, error) {
	if depth > maxCompactDepth {
		return nil, errFallback
	}
	fields := md.Fields()
	for pos < end {
		start := pos
		tag, n := f.varint(pos, end)
		if n < 0 {
			return nil, errFallback
		}
		pos += n
		num, typ := protowire.DecodeTag(tag)
		if num <= 0 {
			return nil, errFallback
		}
		switch typ {
		case protowire.VarintType:
			_, n := f.varint(pos, end)
			if n < 0 {
				return nil, errFallback
			}
			pos += n
		case protowire.Fixed32Type:
			pos += 4
		case protowire.Fixed64Type:
			pos += 8
		case protowire.BytesType:
			l, n := f.varint(pos, end)
			if n < 0 || l > uint64(end-pos-n) {
				return nil, errFallback
			}
			pos += n
			fd := fields.ByNumber(num)
			switch {
			case fd != nil && fd.Kind() == protoreflect.MessageKind && holdsBytes(fd.Message()):
				sub, err := c.compact(f, fd.Message(), pos, pos+int(l), nil, bigs, kind, depth+1)
				if err != nil {
					return nil, err
				}
				out = protowire.AppendTag(out, num, protowire.BytesType)
				out = protowire.AppendBytes(out, sub)
				pos += int(l)
				continue
			case fd != nil && fd.Kind() == protoreflect.BytesKind && int(l) >= c.bigMin:
				idx := len(*bigs)
				*bigs = append(*bigs, c.large(f, pos, int(l), kind))
				out = protowire.AppendTag(out, num, protowire.BytesType)
				out = protowire.AppendVarint(out, uint64(placeholderLen))
				out = append(out, marker[:]...)
				out = binary.LittleEndian.AppendUint32(out, uint32(idx))
				pos += int(l)
				continue
			}
			pos += int(l)
		default:
			return nil, errFallback // groups: not in proto3
		}
		if pos > end {
			return nil, errFallback
		}
		out = f.appendTo(out, start, pos-start)
	}
	return out, nil
}

// bytesFields caches holdsBytes by message type.
var bytesFields sync.Map // protoreflect.FullName -> bool

// holdsBytes reports whether a message of type md can hold a bytes field,
// itself or in a message below it. compact copies a sub-message that
// cannot as it is, instead of rebuilding it: an ObjectTree of 16,384
// children cost a 1 MiB PushMessages about 25 ms of CPU and as many small
// slices as children when each child was compacted apart, and the
// compacted bytes are the same.
func holdsBytes(md protoreflect.MessageDescriptor) bool {
	if v, ok := bytesFields.Load(md.FullName()); ok {
		return v.(bool)
	}
	v := reachesBytes(md, map[protoreflect.FullName]bool{})
	bytesFields.Store(md.FullName(), v)
	return v
}

func reachesBytes(md protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if seen[md.FullName()] {
		return false // a cycle (ObjectTree's children): its other fields decide
	}
	seen[md.FullName()] = true
	fields := md.Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch fd.Kind() {
		case protoreflect.BytesKind:
			return true
		case protoreflect.MessageKind, protoreflect.GroupKind:
			if reachesBytes(fd.Message(), seen) {
				return true
			}
		}
	}
	return false
}

// patch replaces every placeholder in m by its large value and returns how
// many it replaced.
func patch(m protoreflect.Message, bigs [][]byte) int {
	count := 0
	value := func(b []byte) ([]byte, bool) {
		if len(b) != placeholderLen || !bytes.Equal(b[:len(marker)], marker[:]) {
			return nil, false
		}
		i := binary.LittleEndian.Uint32(b[len(marker):])
		if int(i) >= len(bigs) {
			return nil, false
		}
		count++
		return bigs[i], true
	}
	var walk func(m protoreflect.Message)
	walk = func(m protoreflect.Message) {
		var later []func() // a field is set after Range, not during it
		defer func() {
			for _, f := range later {
				f()
			}
		}()
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsMap():
				vk := fd.MapValue().Kind()
				mp := v.Map()
				mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
					switch vk {
					case protoreflect.MessageKind:
						walk(mv.Message())
					case protoreflect.BytesKind:
						if d, ok := value(mv.Bytes()); ok {
							mp.Set(k, protoreflect.ValueOfBytes(d))
						}
					}
					return true
				})
			case fd.IsList():
				l := v.List()
				for i := range l.Len() {
					switch fd.Kind() {
					case protoreflect.MessageKind:
						walk(l.Get(i).Message())
					case protoreflect.BytesKind:
						if d, ok := value(l.Get(i).Bytes()); ok {
							l.Set(i, protoreflect.ValueOfBytes(d))
						}
					}
				}
			case fd.Kind() == protoreflect.MessageKind:
				walk(v.Message())
			case fd.Kind() == protoreflect.BytesKind:
				if d, ok := value(v.Bytes()); ok {
					later = append(later, func() { m.Set(fd, protoreflect.ValueOfBytes(d)) })
				}
			}
			return true
		})
	}
	walk(m)
	return count
}

// invalidNum is the field number of the unknown field a server's codec
// puts in a request it could not decode, with invalidMarker and the
// error; no sender can forge the marker, 16 random bytes of the process.
const invalidNum = protowire.MaxValidNumber

var invalidMarker = func() [16]byte {
	var m [16]byte
	if _, err := rand.Read(m[:]); err != nil {
		panic(err)
	}
	return m
}()

// markInvalid returns nil with m empty but for a mark holding err when
// err is a decoding error, so that invalidInterceptor can answer the call
// with InvalidArgument rather than gRPC with Internal; other errors
// (and nil) come back as they are.
func markInvalid(m proto.Message, err error) error {
	if err == nil || errors.Is(err, errStandInGone) {
		return err
	}
	proto.Reset(m)
	b := protowire.AppendTag(nil, invalidNum, protowire.BytesType)
	b = protowire.AppendBytes(b, append(invalidMarker[:], err.Error()...))
	m.ProtoReflect().SetUnknown(b)
	return nil
}

// invalidOf returns the decoding error markInvalid left in req, if any.
func invalidOf(req any) (string, bool) {
	m, err := messageOf(req)
	if err != nil {
		return "", false
	}
	u := m.ProtoReflect().GetUnknown()
	if len(u) == 0 {
		return "", false
	}
	num, typ, n := protowire.ConsumeTag(u)
	if n < 0 || num != invalidNum || typ != protowire.BytesType {
		return "", false
	}
	v, k := protowire.ConsumeBytes(u[n:])
	if k < 0 || len(v) < len(invalidMarker) || !bytes.Equal(v[:len(invalidMarker)], invalidMarker[:]) {
		return "", false
	}
	return string(v[len(invalidMarker):]), true
}

// note tells the state the hash of d, an array it is about to get.
func (c *Codec) note(d []byte, hash uint64) {
	if c.in != nil {
		c.in.NoteBlob(d, hash)
	}
}
