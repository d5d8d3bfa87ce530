package codec

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"

	"github.com/sepal-fl/sepal/flwrproto"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/golden"
	"github.com/sepal-fl/sepal/state"
	"github.com/sepal-fl/sepal/state/memstate"
)

func concat(bs mem.BufferSlice) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b.ReadOnlyData()...)
	}
	return out
}

// checkCodec asserts that the codec's pieces, joined, are exactly the
// deterministic encoding of m at each threshold, and that decoding them
// gives m back.
func checkCodec(t *testing.T, name string, m proto.Message) {
	t.Helper()
	want, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	for _, min := range []int{0, 1, 2, 100, BigBytes} {
		pieces, err := marshalPieces(m, min)
		if err != nil {
			t.Fatalf("%s (min %d): %v", name, min, err)
		}
		if got := concat(pieces); !bytes.Equal(got, want) {
			t.Fatalf("%s (min %d): codec bytes differ from deterministic proto (%d vs %d bytes)", name, min, len(got), len(want))
		}
		back := m.ProtoReflect().Type().New().Interface()
		c := &Codec{in: memstate.New(memstate.Options{}), bigMin: max(min, 1)}
		if err := c.Unmarshal(splitBuffers(want, 7), back); err != nil {
			t.Fatalf("%s: unmarshal: %v", name, err)
		}
		if !proto.Equal(back, m) {
			t.Fatalf("%s (min %d): decode differs", name, min)
		}
	}
}

// splitBuffers cuts b into buffers of n bytes, as gRPC hands over frames.
func splitBuffers(b []byte, n int) mem.BufferSlice {
	var out mem.BufferSlice
	for len(b) > n {
		out = append(out, mem.SliceBuffer(b[:n]))
		b = b[n:]
	}
	return append(out, mem.SliceBuffer(b))
}

// TestCodecGolden: on every golden message, the codec writes exactly the
// bytes of proto.MarshalOptions{Deterministic: true} (the canonical files),
// whatever part of it is referenced rather than copied.
func TestCodecGolden(t *testing.T) {
	n := 0
	for _, e := range golden.Index(t) {
		for _, s := range []struct{ file, canon, typ string }{{e.Req, e.ReqCanonical, e.ReqType}, {e.Resp, e.RespCanonical, e.RespType}} {
			if s.file == "" {
				continue
			}
			m := golden.Decode(t, s.file, s.typ)
			checkCodec(t, s.file, m)
			got, err := marshalPieces(m, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(concat(got), golden.Bytes(t, s.canon)) {
				t.Errorf("%s: codec bytes differ from %s", s.file, s.canon)
			}
			n++
		}
	}
	if n != 225 {
		t.Errorf("checked %d golden messages, want 225", n)
	}
}

func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// TestCodecSynthetic covers every record kind with large and small bytes,
// nil map values, and unknown fields.
func TestCodecSynthetic(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	big := randomBytes(r, 3*BigBytes+5)
	rs := &flwrproto.RecordSet{
		Parameters: map[string]*flwrproto.ParametersRecord{
			"fitins.parameters": {DataKeys: []string{"0", "1", "2"}, DataValues: []*flwrproto.Array{
				{Dtype: "<f4", Shape: []int32{-1, 3, 1 << 20}, Stype: "numpy.ndarray", Data: big},
				{Stype: "numpy.ndarray", Data: []byte("small")},
				{Data: big[:BigBytes]},
			}},
			"b":     {},
			"nil":   nil,
			"zzz":   {DataKeys: []string{"x"}, DataValues: []*flwrproto.Array{{Data: big[1:]}}},
			"empty": {DataValues: []*flwrproto.Array{{}}},
		},
		Metrics: map[string]*flwrproto.MetricsRecord{"m": {Data: map[string]*flwrproto.MetricsRecordValue{
			"a": {Value: &flwrproto.MetricsRecordValue_Double{Double: 0.5}},
			"b": {Value: &flwrproto.MetricsRecordValue_Sint64List{Sint64List: &flwrproto.Sint64List{Vals: []int64{-1, 0, 1 << 40}}}},
			"c": {Value: &flwrproto.MetricsRecordValue_Sint64{Sint64: 0}},
		}}},
		Configs: map[string]*flwrproto.ConfigsRecord{"c": {Data: map[string]*flwrproto.ConfigsRecordValue{
			"bytes":  {Value: &flwrproto.ConfigsRecordValue_Bytes{Bytes: big}},
			"list":   {Value: &flwrproto.ConfigsRecordValue_BytesList{BytesList: &flwrproto.BytesList{Vals: [][]byte{big, {}, []byte("x"), big[:10]}}}},
			"str":    {Value: &flwrproto.ConfigsRecordValue_String_{String_: "hello"}},
			"bool":   {Value: &flwrproto.ConfigsRecordValue_Bool{Bool: false}},
			"nilval": nil,
		}}},
	}
	ins := taskIns(-5, 7, 1.8e9)
	ins.TaskId = "83bddbf3-413b-4b2c-9a1e-0bdfad5084ab"
	ins.Task.Recordset = rs
	ins.Task.DeliveredAt = "2026-11-25T20:34:14.053681+00:00"
	withUnknown := proto.Clone(ins).(*flwrproto.TaskIns)
	withUnknown.Task.Recordset.Parameters["fitins.parameters"].DataValues[0].ProtoReflect().SetUnknown([]byte{0xf8, 0x06, 0x01}) // field 111 varint 1
	for name, m := range map[string]proto.Message{
		"PullTaskInsResponse": &flwrproto.PullTaskInsResponse{Reconnect: &flwrproto.Reconnect{Reconnect: 5}, TaskInsList: []*flwrproto.TaskIns{ins, ins}},
		"PushTaskInsRequest":  &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{withUnknown, {}}},
		"PullTaskResResponse": &flwrproto.PullTaskResResponse{TaskResList: []*flwrproto.TaskRes{{TaskId: "x", Task: &flwrproto.Task{Recordset: rs}}}},
		"PushTaskResResponse": &flwrproto.PushTaskResResponse{Results: map[string]uint32{"b": 0, "a": 7}},
		"PushTaskResRequest":  &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{{Task: &flwrproto.Task{Recordset: rs}}, {}}},
		"Empty":               &flwrproto.PullTaskInsResponse{},
	} {
		checkCodec(t, name, m)
	}

	// The large array travels by reference: no piece copies it.
	pieces, err := New(Options{}).Marshal(&flwrproto.PullTaskInsResponse{TaskInsList: []*flwrproto.TaskIns{ins}})
	if err != nil {
		t.Fatal(err)
	}
	refs := 0
	for _, p := range pieces {
		if d := p.ReadOnlyData(); len(d) > 0 && &d[0] == &big[0] {
			refs++
		}
	}
	if refs == 0 {
		t.Errorf("the large array was copied into the response, want it referenced (%d pieces)", len(pieces))
	}
}

// heldBlob is a BlobFinder holding one array, which keeps the hashes
// noted.
type heldBlob struct {
	data  []byte
	notes map[*byte]uint64
}

func (h heldBlob) NoteBlob(b []byte, hash uint64) { h.notes[&b[0]] = hash }

func (h heldBlob) FindBlob(hash uint64, n int, eq func([]byte) bool) []byte {
	if n == len(h.data) && hash == state.HashBlob(h.data) && eq(h.data) {
		return h.data
	}
	return nil
}

// An array the state holds is not copied, whether it comes with the
// ServerApp's parameters (looked up first) or with a node's result
// (copied and hashed in one pass, then looked up); a new array is
// copied, and the hash the codec notes for it is its real hash.
func TestCodecLargeArrays(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	held := randomBytes(r, 2*BigBytes)
	fresh := randomBytes(r, 2*BigBytes+3)
	rs := func(d []byte) *flwrproto.RecordSet {
		return &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: d}}}}}
	}
	hb := heldBlob{held, map[*byte]uint64{}}
	c := &Codec{in: hb, bigMin: BigBytes}
	for _, tc := range []struct {
		name string
		m    proto.Message
		data func(proto.Message) []byte
	}{
		{"PushTaskInsRequest", &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{{Task: &flwrproto.Task{Recordset: rs(nil)}}}},
			func(m proto.Message) []byte {
				return m.(*flwrproto.PushTaskInsRequest).TaskInsList[0].Task.Recordset.Parameters["p"].DataValues[0].Data
			}},
		{"PushTaskResRequest", &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{{Task: &flwrproto.Task{Recordset: rs(nil)}}}},
			func(m proto.Message) []byte {
				return m.(*flwrproto.PushTaskResRequest).TaskResList[0].Task.Recordset.Parameters["p"].DataValues[0].Data
			}},
	} {
		for _, content := range [][]byte{held, fresh} {
			m := proto.Clone(tc.m)
			setData(m, content)
			enc, err := proto.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			back := m.ProtoReflect().Type().New().Interface()
			if err := c.Unmarshal(splitBuffers(enc, 16384), back); err != nil {
				t.Fatalf("%s: %v", tc.name, err)
			}
			d := tc.data(back)
			if !bytes.Equal(d, content) {
				t.Fatalf("%s: decoded array differs", tc.name)
			}
			isHeld := &d[0] == &held[0]
			if want := &content[0] == &held[0]; isHeld != want {
				t.Errorf("%s: decoded array is the held one: %v, want %v", tc.name, isHeld, want)
			}
			if got, ok := hb.notes[&d[0]]; !isHeld && (!ok || got != state.HashBlob(d)) {
				t.Errorf("%s: the hash noted for the decoded array is %x (noted %v), its real hash %x", tc.name, got, ok, state.HashBlob(d))
			}
		}
	}
}

// setData puts d into the one array of a PushTaskIns or PushTaskRes request.
func setData(m proto.Message, d []byte) {
	switch m := m.(type) {
	case *flwrproto.PushTaskInsRequest:
		m.TaskInsList[0].Task.Recordset.Parameters["p"].DataValues[0].Data = d
	case *flwrproto.PushTaskResRequest:
		m.TaskResList[0].Task.Recordset.Parameters["p"].DataValues[0].Data = d
	}
}

// BenchmarkUnmarshalResult decodes a PushTaskResRequest carrying one
// 32 MiB array from 16 KiB frames, as gRPC hands it over, through a
// state that does not hold it: the copy out of the frames, its hash and
// the garbage collection before a large allocation.
//
//	go test ./superlink -run '^$' -bench UnmarshalResult
func BenchmarkUnmarshalResult(b *testing.B) {
	r := rand.New(rand.NewPCG(5, 6))
	data := randomBytes(r, 32<<20)
	m := &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{{Task: &flwrproto.Task{Recordset: &flwrproto.RecordSet{
		Parameters: map[string]*flwrproto.ParametersRecord{"fitres.parameters": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: data}}}},
	}}}}}
	enc, err := proto.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	frames := splitBuffers(enc, 16<<10)
	c := &Codec{in: heldBlob{nil, map[*byte]uint64{}}, bigMin: BigBytes}
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		var got flwrproto.PushTaskResRequest
		if err := c.Unmarshal(frames, &got); err != nil {
			b.Fatal(err)
		}
	}
}

// inside reports whether b lies inside buf.
func inside(buf, b []byte) bool { return len(b) > 0 && within(buf, b) }

// A captured request is decoded in place: a node's array is a slice of
// the request's buffer, not a copy; an array the state holds is the held
// one; a ServerApp's push that carries one model per node keeps one copy
// of its own, not the whole buffer of copies.
func TestCodecOwnedBuffers(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	held := randomBytes(r, 2*BigBytes)
	model := randomBytes(r, 3*BigBytes)
	hb := heldBlob{held, map[*byte]uint64{}}
	c := New(Options{Finder: hb, StandIns: noStandIns{}})
	rs := func(d []byte) *flwrproto.RecordSet {
		return &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: d}}}}}
	}

	// A node's result with a new array and a held one.
	res := &flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{{Task: &flwrproto.Task{Recordset: rs(model)}}, {Task: &flwrproto.Task{Recordset: rs(held)}}}}
	buf, err := proto.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var got flwrproto.PushTaskResRequest
	if err := c.unmarshalOwned(buf, &got); err != nil {
		t.Fatal(err)
	}
	a := got.TaskResList[0].Task.Recordset.Parameters["p"].DataValues[0].Data
	b := got.TaskResList[1].Task.Recordset.Parameters["p"].DataValues[0].Data
	if !bytes.Equal(a, model) || !inside(buf, a) {
		t.Errorf("the new array is equal %v, a slice of the buffer %v", bytes.Equal(a, model), inside(buf, a))
	}
	if &b[0] != &held[0] {
		t.Error("the held array was not the state's")
	}
	if cap(a) != len(a) {
		t.Errorf("the array's capacity reaches past it: %d > %d", cap(a), len(a))
	}

	// A ServerApp's push of one model to 8 nodes.
	ins := &flwrproto.PushTaskInsRequest{}
	for range 8 {
		ins.TaskInsList = append(ins.TaskInsList, &flwrproto.TaskIns{Task: &flwrproto.Task{Recordset: rs(model)}})
	}
	buf, err = proto.Marshal(ins)
	if err != nil {
		t.Fatal(err)
	}
	var gotIns flwrproto.PushTaskInsRequest
	if err := c.unmarshalOwned(buf, &gotIns); err != nil {
		t.Fatal(err)
	}
	first := gotIns.TaskInsList[0].Task.Recordset.Parameters["p"].DataValues[0].Data
	if !bytes.Equal(first, model) || inside(buf, first) {
		t.Errorf("the model is equal %v, a slice of the 8-copy buffer %v (want a copy of its own)", bytes.Equal(first, model), inside(buf, first))
	}
	for i, ti := range gotIns.TaskInsList {
		if d := ti.Task.Recordset.Parameters["p"].DataValues[0].Data; &d[0] != &first[0] {
			t.Errorf("task %d holds a copy of its own", i)
		}
	}
	if got, ok := hb.notes[&first[0]]; !ok || got != state.HashBlob(first) {
		t.Errorf("the hash noted for the copy is %x (noted %v), its hash %x", got, ok, state.HashBlob(first))
	}
}

// TestDecodeInterns: a large array that the state already holds is not
// copied again when it arrives; a new one is copied out of the frames (which
// gRPC reuses) into memory of its own.
func TestDecodeInterns(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	held := randomBytes(r, 2*BigBytes)
	st := memstate.New(memstate.Options{})
	ctx := t.Context()
	node, err := st.CreateNode(ctx, state.NewNode{PingInterval: 30})
	if err != nil {
		t.Fatal(err)
	}
	run, err := st.CreateRun(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hold := taskIns(run, node, 1.8e9)
	hold.Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataValues: []*flwrproto.Array{{Data: held}}}}}
	if _, err := st.PushTaskIns(ctx, []*flwrproto.TaskIns{hold}); err != nil {
		t.Fatal(err)
	}
	c := New(Options{Finder: st})

	msg := &flwrproto.PushTaskInsRequest{TaskInsList: []*flwrproto.TaskIns{taskIns(1, 2, 1.8e9)}}
	fresh := randomBytes(r, BigBytes+3)
	msg.TaskInsList[0].Task.Recordset = &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
		"p": {DataKeys: []string{"0", "1"}, DataValues: []*flwrproto.Array{{Data: bytes.Clone(held)}, {Data: fresh}}},
	}}
	wire, err := proto.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	var got flwrproto.PushTaskInsRequest
	if err := c.Unmarshal(splitBuffers(wire, 16<<10), &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, msg) {
		t.Fatal("decoded message differs")
	}
	vals := got.TaskInsList[0].Task.Recordset.Parameters["p"].DataValues
	if &vals[0].Data[0] != &held[0] {
		t.Error("an array the SuperLink holds was copied again")
	}
	clear(wire) // gRPC reuses its frames
	if !bytes.Equal(vals[1].Data, fresh) {
		t.Error("a new array still points into the frames")
	}

	// Malformed input falls back to proto's own error.
	if err := c.Unmarshal(splitBuffers(append(bytes.Repeat([]byte{0x0a, 0xff}, BigBytes), 0xff), 100), &got); err == nil {
		t.Error("malformed message decoded without error")
	}
}

// noStandIns resolve nothing: a server's codec without captured requests.
type noStandIns struct{}

func (noStandIns) Resolve([]byte) ([]byte, bool) { return nil, false }

// taskIns returns a valid TaskIns of run for node, created at created.
func taskIns(run, node int64, created float64) *flwrproto.TaskIns {
	return &flwrproto.TaskIns{
		GroupId: "1",
		RunId:   run,
		Task: &flwrproto.Task{
			Producer:  &flwrproto.Node{Anonymous: true},
			Consumer:  &flwrproto.Node{NodeId: node},
			CreatedAt: created,
			Ttl:       3600,
			TaskType:  "train",
			Recordset: &flwrproto.RecordSet{},
		},
	}
}

// BenchmarkUnmarshalObject decodes a captured PushObjectRequest carrying
// a 5 MiB chunk, the request Flower 1.29.0's peers send most, as a
// SuperLink's codec on the in-memory state does: the object's content is
// a slice of the request's buffer, and nothing else reads its bytes (the
// state hashes it once, with SHA-256, for its id).
//
//	go test ./superlink/internal/codec -run '^$' -bench UnmarshalObject
func BenchmarkUnmarshalObject(b *testing.B) {
	r := rand.New(rand.NewPCG(7, 8))
	content := randomBytes(r, 5<<20)
	buf, err := proto.Marshal(&flwr129.PushObjectRequest{Node: &flwr129.Node{NodeId: 9}, RunId: 3, ObjectId: "ab", ObjectContent: content})
	if err != nil {
		b.Fatal(err)
	}
	c := New(Options{Finder: memstate.New(memstate.Options{}), StandIns: noStandIns{}, Opaque: func(proto.Message) bool { return true }})
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		var got flwr129.PushObjectRequest
		if err := c.unmarshalOwned(buf, &got); err != nil {
			b.Fatal(err)
		}
		if !inside(buf, got.ObjectContent) {
			b.Fatal("the content is not a slice of the request's buffer")
		}
	}
}

// An opaque request's large bytes are taken as they come: from a
// captured buffer, a slice of it; from frames, one copy. Neither is
// looked up in the state (which holds the same bytes here) nor noted.
func TestCodecOpaque(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	content := randomBytes(r, 2*BigBytes)
	hb := heldBlob{slices.Clone(content), map[*byte]uint64{}}
	c := New(Options{Finder: hb, StandIns: noStandIns{}, Opaque: func(m proto.Message) bool {
		_, ok := m.(*flwr129.PushObjectRequest)
		return ok
	}})
	buf, err := proto.Marshal(&flwr129.PushObjectRequest{RunId: 3, ObjectId: "ab", ObjectContent: content})
	if err != nil {
		t.Fatal(err)
	}
	var owned, framed flwr129.PushObjectRequest
	if err := c.unmarshalOwned(buf, &owned); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(owned.ObjectContent, content) || !inside(buf, owned.ObjectContent) {
		t.Errorf("from a captured buffer: equal %v, a slice of it %v", bytes.Equal(owned.ObjectContent, content), inside(buf, owned.ObjectContent))
	}
	if err := c.Unmarshal(splitBuffers(buf, 16<<10), &framed); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(framed.ObjectContent, content) || &framed.ObjectContent[0] == &hb.data[0] {
		t.Errorf("from frames: equal %v, the state's copy %v", bytes.Equal(framed.ObjectContent, content), &framed.ObjectContent[0] == &hb.data[0])
	}
	if len(hb.notes) != 0 {
		t.Errorf("%d hashes noted for opaque content", len(hb.notes))
	}
	// A 1.8.0 array with the same bytes is still found in the state.
	var res flwrproto.PushTaskResRequest
	enc, err := proto.Marshal(&flwrproto.PushTaskResRequest{TaskResList: []*flwrproto.TaskRes{{Task: &flwrproto.Task{Recordset: &flwrproto.RecordSet{
		Parameters: map[string]*flwrproto.ParametersRecord{"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: content}}}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Unmarshal(splitBuffers(enc, 16<<10), &res); err != nil {
		t.Fatal(err)
	}
	if d := res.TaskResList[0].Task.Recordset.Parameters["p"].DataValues[0].Data; &d[0] != &hb.data[0] {
		t.Error("an array of a 1.8.0 request was not looked up")
	}
}

// deepTree is an object tree n deep.
func deepTree(n int) *flwr129.ObjectTree {
	root := &flwr129.ObjectTree{ObjectId: "0"}
	for t, i := root, 1; i < n; i++ {
		t.Children = []*flwr129.ObjectTree{{ObjectId: strconv.Itoa(i)}}
		t = t.Children[0]
	}
	return root
}

// deepType is a message type that nests in itself and holds bytes:
// message Deep { bytes data = 1; Deep child = 2; }.
func deepType(t testing.TB) protoreflect.MessageDescriptor {
	fd, err := protodesc.NewFile(&descriptorpb.FileDescriptorProto{
		Name: proto.String("deep.proto"), Package: proto.String("sepaltest"), Syntax: proto.String("proto3"),
		MessageType: []*descriptorpb.DescriptorProto{{
			Name: proto.String("Deep"),
			Field: []*descriptorpb.FieldDescriptorProto{
				{Name: proto.String("data"), Number: proto.Int32(1), Type: descriptorpb.FieldDescriptorProto_TYPE_BYTES.Enum(), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), JsonName: proto.String("data")},
				{Name: proto.String("child"), Number: proto.Int32(2), Type: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(), TypeName: proto.String(".sepaltest.Deep"), Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), JsonName: proto.String("child")},
			},
		}},
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return fd.Messages().Get(0)
}

// deepBytes is a Deep message n deep whose innermost level holds data.
func deepBytes(md protoreflect.MessageDescriptor, n int, data []byte) proto.Message {
	root := dynamicpb.NewMessage(md)
	m := root
	for range n - 1 {
		c := dynamicpb.NewMessage(md)
		m.Set(md.Fields().ByName("child"), protoreflect.ValueOfMessage(c))
		m = c
	}
	m.Set(md.Fields().ByName("data"), protoreflect.ValueOfBytes(data))
	return root
}

// TestDecodeDeep: a message that can hold bytes nested deeper than
// maxCompactDepth is not compacted (each level would copy all below it
// again) but still decodes, through proto.Unmarshal; one within it is
// compacted. An object tree, which holds no bytes, is copied as it is at
// any depth, not walked.
func TestDecodeDeep(t *testing.T) {
	md := deepType(t)
	data := bytes.Repeat([]byte{7}, 64)
	for _, n := range []int{maxCompactDepth, maxCompactDepth + 2, 5000} {
		m := deepBytes(md, n, data)
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		c := &Codec{bigMin: 32}
		var bigs [][]byte
		_, err = c.compact(newFrames(splitBuffers(b, 7)), md, 0, len(b), nil, &bigs, arraysHeld, 0)
		if deep := n > maxCompactDepth+1; deep != (err == errFallback) {
			t.Errorf("compact of a Deep %d deep: %v", n, err)
		}
		back := dynamicpb.NewMessage(md)
		if err := c.Unmarshal(splitBuffers(b, 7), back); err != nil {
			t.Fatalf("a Deep %d deep: %v", n, err)
		}
		if !proto.Equal(back, m) {
			t.Errorf("a Deep %d deep decodes differently", n)
		}

		tree := deepTree(n)
		if b, err = proto.Marshal(tree); err != nil {
			t.Fatal(err)
		}
		out, err := c.compact(newFrames(splitBuffers(b, 7)), tree.ProtoReflect().Descriptor(), 0, len(b), nil, &bigs, arraysHeld, 0)
		if err != nil || !bytes.Equal(out, b) {
			t.Errorf("compact of a tree %d deep: %v, the bytes as they came %v", n, err, bytes.Equal(out, b))
		}
		back2 := &flwr129.ObjectTree{}
		if err := c.Unmarshal(splitBuffers(b, 7), back2); err != nil || !proto.Equal(back2, tree) {
			t.Errorf("a tree %d deep: %v, decodes the same %v", n, err, proto.Equal(back2, tree))
		}
	}
}

// BenchmarkUnmarshalDeep decodes a tree 5,000 deep (350 KB), as a peer
// may send one: linear in its size, not its size times its depth.
func BenchmarkUnmarshalDeep(b *testing.B) {
	buf, err := proto.Marshal(deepTree(5000))
	if err != nil {
		b.Fatal(err)
	}
	c := &Codec{bigMin: 1}
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		if err := c.Unmarshal(splitBuffers(buf, 16<<10), &flwr129.ObjectTree{}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnmarshalWideTree decodes a SuperNode's PushMessagesRequest
// whose object tree names 16,374 objects (about 1.1 MB), as an attacker
// sends one: the tree is copied as it is, not walked child by child.
func BenchmarkUnmarshalWideTree(b *testing.B) {
	kids := make([]*flwr129.ObjectTree, 16374)
	for i := range kids {
		kids[i] = &flwr129.ObjectTree{ObjectId: fmt.Sprintf("%064x", i)}
	}
	req := &flwr129.PushMessagesRequest{Node: &flwr129.Node{NodeId: 9},
		MessagesList:       []*flwr129.Message{{Metadata: &flwr129.Metadata{RunId: 3, MessageId: fmt.Sprintf("%064x", 1<<40)}}},
		MessageObjectTrees: []*flwr129.ObjectTree{{ObjectId: fmt.Sprintf("%064x", 1<<40), Children: []*flwr129.ObjectTree{{ObjectId: fmt.Sprintf("%064x", 1<<41), Children: kids}}}}}
	buf, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	c := New(Options{Finder: memstate.New(memstate.Options{}), StandIns: noStandIns{}})
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		if err := c.Unmarshal(splitBuffers(buf, 16<<10), &flwr129.PushMessagesRequest{}); err != nil {
			b.Fatal(err)
		}
	}
}
