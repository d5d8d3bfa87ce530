// Package codec is the gRPC codec of a SuperLink's servers: deterministic
// protobuf that sends large arrays by reference and decodes them from the
// frames, or in place from a captured request, without a copy per reader.
package codec

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sepal-fl/sepal/internal/bigbuf"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/superlink/internal/wire"
)

// BigBytes is the size from which a bytes field is sent as a reference to
// the held array rather than copied into the response buffer.
const BigBytes = 64 << 10

// Codec is the SuperLink's gRPC codec (content-subtype "proto", the
// default). Its wire bytes are exactly proto.MarshalOptions{Deterministic:
// true}; what differs is where they live:
//
//   - Marshal writes a message that holds large bytes fields (parameter
//     arrays) as a list of buffers: the small parts copied, each large
//     bytes value referenced where it is held, so N nodes pulling the same
//     100 MiB TaskIns cost N small buffers, not N copies. gRPC writes the
//     buffers to the connection one frame at a time.
//   - Unmarshal decodes from the received frames (see decode.go): large
//     bytes fields are copied once, straight from the frames into a slice
//     of their own, or not at all when the state already holds the same
//     content (a state.BlobFinder).
//
// Held arrays are never modified, so sharing them with responses in flight
// is safe. It is safe for concurrent use.
type Codec struct {
	in     state.BlobFinder // may be nil
	bigMin int
	o      Options
}

// Options configure a Codec. The zero value is a client's codec.
type Options struct {
	// Finder, when set, is asked for each large array decoded, so that
	// an array the state holds already is not copied again. Default: none.
	Finder state.BlobFinder
	// StandIns, on a server's codec, resolve the stand-ins of captured
	// requests (see package wire). A server's codec also turns a request
	// it cannot decode into one the InvalidInterceptors answer with
	// InvalidArgument (gRPC answers a codec's error with Internal).
	// Default: none (a client's codec).
	StandIns StandIns
	// Fresh reports whether the large arrays of a message are most likely
	// new (a node's result), which decodes them in one pass: copied and
	// hashed at once, looked up after. Default: none are.
	Fresh func(proto.Message) bool
	// Opaque reports whether the large bytes fields of a message are
	// contents the state neither looks up nor interns by their
	// state.HashBlob (Flower 1.29.0's objects, which a state keys by
	// their SHA-256): they are decoded without being hashed, looked up
	// or noted, and so read once less. Default: none are.
	Opaque func(proto.Message) bool
}

// StandIns resolve a stand-in message to the buffer of the request it
// stands for (wire.StandIns).
type StandIns interface {
	Resolve(msg []byte) ([]byte, bool)
}

var _ encoding.CodecV2 = (*Codec)(nil)

// New returns a codec.
func New(o Options) *Codec { return &Codec{in: o.Finder, bigMin: BigBytes, o: o} }

// Name is "proto": the codec replaces gRPC's default for this server.
func (c *Codec) Name() string { return "proto" }

func messageOf(v any) (proto.Message, error) {
	switch m := v.(type) {
	case protoadapt.MessageV2:
		return m, nil
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(m), nil
	}
	return nil, fmt.Errorf("%T is not a protobuf message", v)
}

// Marshal encodes v deterministically (map entries sorted by key).
func (c *Codec) Marshal(v any) (mem.BufferSlice, error) {
	m, err := messageOf(v)
	if err != nil {
		return nil, err
	}
	w := &writer{bigMin: c.bigMin}
	if !w.isBig(m.ProtoReflect()) {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	if err := w.message(m.ProtoReflect()); err != nil {
		return nil, err
	}
	w.flush()
	return w.out, nil
}

// marshalPieces is Marshal for tests, with a chosen threshold.
func marshalPieces(m proto.Message, bigMin int) (mem.BufferSlice, error) {
	c := &Codec{bigMin: bigMin}
	return c.Marshal(m)
}

// writer assembles a message from copied small parts and referenced large
// bytes values.
type writer struct {
	bigMin int
	out    mem.BufferSlice
	cur    []byte
}

func (w *writer) flush() {
	if len(w.cur) > 0 {
		w.out = append(w.out, mem.SliceBuffer(w.cur))
		w.cur = nil
	}
}

func (w *writer) bytesValue(b []byte) {
	w.cur = protowire.AppendVarint(w.cur, uint64(len(b)))
	if len(b) >= w.bigMin {
		w.flush()
		w.out = append(w.out, bigbuf.Shared.Buffer(b)) // a lent buffer goes back once written
		return
	}
	w.cur = append(w.cur, b...)
}

// isBig reports whether m holds a large bytes value anywhere.
func (w *writer) isBig(m protoreflect.Message) bool {
	big := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		big = w.fieldBig(fd, v)
		return !big
	})
	return big
}

func (w *writer) fieldBig(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
	switch {
	case fd.IsMap():
		vd := fd.MapValue()
		big := false
		v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
			big = w.singleBig(vd, mv)
			return !big
		})
		return big
	case fd.IsList():
		l := v.List()
		for i := range l.Len() {
			if w.singleBig(fd, l.Get(i)) {
				return true
			}
		}
		return false
	}
	return w.singleBig(fd, v)
}

func (w *writer) singleBig(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
	switch fd.Kind() {
	case protoreflect.BytesKind:
		return len(v.Bytes()) >= w.bigMin
	case protoreflect.MessageKind:
		return w.isBig(v.Message())
	}
	return false
}

// sortedFields returns md's fields by number, the order
// proto.MarshalOptions writes them in.
func sortedFields(md protoreflect.MessageDescriptor) []protoreflect.FieldDescriptor {
	fs := md.Fields()
	out := make([]protoreflect.FieldDescriptor, fs.Len())
	for i := range out {
		out[i] = fs.Get(i)
	}
	slices.SortFunc(out, func(a, b protoreflect.FieldDescriptor) int { return cmp.Compare(a.Number(), b.Number()) })
	return out
}

var det = proto.MarshalOptions{Deterministic: true}

func (w *writer) message(m protoreflect.Message) error {
	for _, fd := range sortedFields(m.Descriptor()) {
		if !m.Has(fd) {
			continue
		}
		v := m.Get(fd)
		if !w.fieldBig(fd, v) {
			// Encode this field alone: a message holding only it.
			one := m.Type().New()
			one.Set(fd, v)
			var err error
			if w.cur, err = det.MarshalAppend(w.cur, one.Interface()); err != nil {
				return err
			}
			continue
		}
		switch {
		case fd.IsMap():
			if err := w.mapField(fd, v.Map()); err != nil {
				return err
			}
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				if err := w.single(fd.Number(), fd.Kind(), l.Get(i)); err != nil {
					return err
				}
			}
		default:
			if err := w.single(fd.Number(), fd.Kind(), v); err != nil {
				return err
			}
		}
	}
	w.cur = append(w.cur, m.GetUnknown()...)
	return nil
}

// single writes one length-delimited value (a message or bytes) of a
// field holding a large bytes value.
func (w *writer) single(num protoreflect.FieldNumber, kind protoreflect.Kind, v protoreflect.Value) error {
	w.cur = protowire.AppendTag(w.cur, num, protowire.BytesType)
	switch kind {
	case protoreflect.BytesKind:
		w.bytesValue(v.Bytes())
		return nil
	case protoreflect.MessageKind:
		sub := v.Message()
		w.cur = protowire.AppendVarint(w.cur, uint64(proto.Size(sub.Interface())))
		return w.message(sub)
	}
	return fmt.Errorf("unexpected protobuf kind %v", kind)
}

func (w *writer) mapField(fd protoreflect.FieldDescriptor, m protoreflect.Map) error {
	kd, vd := fd.MapKey(), fd.MapValue()
	keys := make([]protoreflect.MapKey, 0, m.Len())
	m.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
		keys = append(keys, k)
		return true
	})
	slices.SortFunc(keys, func(a, b protoreflect.MapKey) int { return compareKeys(kd.Kind(), a, b) })
	for _, k := range keys {
		v := m.Get(k)
		key := appendScalar(nil, 1, kd.Kind(), k.Value())
		var valSize int
		switch vd.Kind() {
		case protoreflect.MessageKind:
			valSize = proto.Size(v.Message().Interface())
		case protoreflect.BytesKind:
			valSize = len(v.Bytes())
		default:
			valSize = -1
		}
		if valSize < 0 || !w.singleBig(vd, v) {
			// A small entry: encode it whole.
			val := protowire.AppendTag(nil, 2, protowire.BytesType)
			switch vd.Kind() {
			case protoreflect.MessageKind:
				val = protowire.AppendVarint(val, uint64(valSize))
				var err error
				if val, err = det.MarshalAppend(val, v.Message().Interface()); err != nil {
					return err
				}
			case protoreflect.BytesKind:
				val = protowire.AppendBytes(val, v.Bytes())
			default:
				val = appendScalar(nil, 2, vd.Kind(), v)
			}
			w.cur = protowire.AppendTag(w.cur, fd.Number(), protowire.BytesType)
			w.cur = protowire.AppendVarint(w.cur, uint64(len(key)+len(val)))
			w.cur = append(w.cur, key...)
			w.cur = append(w.cur, val...)
			continue
		}
		entry := len(key) + protowire.SizeTag(2) + protowire.SizeBytes(valSize)
		w.cur = protowire.AppendTag(w.cur, fd.Number(), protowire.BytesType)
		w.cur = protowire.AppendVarint(w.cur, uint64(entry))
		w.cur = append(w.cur, key...)
		if err := w.single(2, vd.Kind(), v); err != nil {
			return err
		}
	}
	return nil
}

func compareKeys(k protoreflect.Kind, a, b protoreflect.MapKey) int {
	switch k {
	case protoreflect.BoolKind:
		ab, bb := a.Bool(), b.Bool()
		switch {
		case ab == bb:
			return 0
		case !ab:
			return -1
		}
		return 1
	case protoreflect.StringKind:
		return cmp.Compare(a.String(), b.String())
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind, protoreflect.Fixed32Kind, protoreflect.Fixed64Kind:
		return cmp.Compare(a.Uint(), b.Uint())
	}
	return cmp.Compare(a.Int(), b.Int())
}

// appendScalar appends field num holding the scalar v of kind k.
func appendScalar(b []byte, num protoreflect.FieldNumber, k protoreflect.Kind, v protoreflect.Value) []byte {
	switch k {
	case protoreflect.BoolKind:
		b = protowire.AppendTag(b, num, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(v.Bool()))
	case protoreflect.EnumKind:
		b = protowire.AppendTag(b, num, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(int64(v.Enum())))
	case protoreflect.Int32Kind, protoreflect.Int64Kind:
		b = protowire.AppendTag(b, num, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(v.Int()))
	case protoreflect.Sint32Kind, protoreflect.Sint64Kind:
		b = protowire.AppendTag(b, num, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeZigZag(v.Int()))
	case protoreflect.Uint32Kind, protoreflect.Uint64Kind:
		b = protowire.AppendTag(b, num, protowire.VarintType)
		return protowire.AppendVarint(b, v.Uint())
	case protoreflect.Fixed32Kind:
		b = protowire.AppendTag(b, num, protowire.Fixed32Type)
		return protowire.AppendFixed32(b, uint32(v.Uint()))
	case protoreflect.Sfixed32Kind:
		b = protowire.AppendTag(b, num, protowire.Fixed32Type)
		return protowire.AppendFixed32(b, uint32(v.Int()))
	case protoreflect.FloatKind:
		b = protowire.AppendTag(b, num, protowire.Fixed32Type)
		return protowire.AppendFixed32(b, math.Float32bits(float32(v.Float())))
	case protoreflect.Fixed64Kind:
		b = protowire.AppendTag(b, num, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, v.Uint())
	case protoreflect.Sfixed64Kind:
		b = protowire.AppendTag(b, num, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, uint64(v.Int()))
	case protoreflect.DoubleKind:
		b = protowire.AppendTag(b, num, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(v.Float()))
	case protoreflect.StringKind:
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendString(b, v.String())
	case protoreflect.BytesKind:
		b = protowire.AppendTag(b, num, protowire.BytesType)
		return protowire.AppendBytes(b, v.Bytes())
	}
	panic(fmt.Sprintf("protobuf kind %v cannot be a map key or scalar value", k))
}

// Unmarshal decodes data into v. See decode.go.
func (c *Codec) Unmarshal(data mem.BufferSlice, v any) error {
	m, err := messageOf(v)
	if err != nil {
		return err
	}
	if c.o.StandIns == nil {
		return c.unmarshal(data, m)
	}
	if data.Len() == wire.StandInLen {
		var small [wire.StandInLen]byte
		data.CopyTo(small[:])
		if buf, ok := c.o.StandIns.Resolve(small[:]); ok {
			if buf == nil {
				return errStandInGone
			}
			return markInvalid(m, c.unmarshalOwned(buf, m))
		}
	}
	return markInvalid(m, c.unmarshal(data, m))
}

// errStandInGone is a captured request whose stream ended before gRPC
// asked for it.
var errStandInGone = errors.New("the request was cut off before it was read")

// InvalidUnaryInterceptor answers a request a server's codec could not
// decode with InvalidArgument, naming the message it expected.
func InvalidUnaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if why, ok := invalidOf(req); ok {
		return nil, invalidRequest(info.FullMethod, req, why)
	}
	return h(ctx, req)
}

// InvalidStreamInterceptor is InvalidUnaryInterceptor for the messages a
// streaming handler receives.
func InvalidStreamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	return h(srv, invalidCheckStream{ss, info.FullMethod})
}

type invalidCheckStream struct {
	grpc.ServerStream
	method string
}

func (s invalidCheckStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if why, ok := invalidOf(m); ok {
		return invalidRequest(s.method, m, why)
	}
	return nil
}

// invalidRequest is the status of a request that is not the message its
// method takes.
func invalidRequest(method string, req any, why string) error {
	name := fmt.Sprintf("%T", req)
	if m, err := messageOf(req); err == nil {
		name = string(m.ProtoReflect().Descriptor().FullName())
	}
	return status.Errorf(codes.InvalidArgument, "%s: the request is not a valid %s: %s", method[strings.LastIndexByte(method, '/')+1:], name, why)
}
