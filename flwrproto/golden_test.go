package flwrproto_test

import (
	"bytes"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	_ "github.com/sepal-fl/sepal/flwrproto"

	"github.com/sepal-fl/sepal/internal/golden"
)

// TestGoldenRoundTrip decodes every message Flower 1.8.0 sent or received in
// the captured run into our generated types, checks that no field is
// unknown to us, and that our deterministic encoding is byte for byte the
// canonical one.
func TestGoldenRoundTrip(t *testing.T) {
	entries := golden.Index(t)
	if len(entries) != 115 {
		t.Fatalf("index.jsonl has %d entries, want 115", len(entries))
	}
	files := 0
	for _, e := range entries {
		sides := []struct {
			file, canon, typ string
			js               []byte
		}{
			{e.Req, e.ReqCanonical, e.ReqType, e.ReqJSON},
			{e.Resp, e.RespCanonical, e.RespType, e.RespJSON},
		}
		for _, s := range sides {
			if s.file == "" {
				continue // a failed RPC has no response
			}
			files++
			// The type is the one our service descriptor gives the method.
			if want := methodType(t, e.Method, s.file == e.Req); s.typ != want {
				t.Fatalf("%s: index says %s, our %s takes %s", s.file, s.typ, e.Method, want)
			}
			m := golden.Decode(t, s.file, s.typ)
			assertNoUnknown(t, s.file, m.ProtoReflect())
			got, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
			if err != nil {
				t.Fatalf("%s: marshal: %v", s.file, err)
			}
			want := golden.Bytes(t, s.canon)
			if !bytes.Equal(got, want) {
				t.Errorf("%s: deterministic re-encoding differs from %s (%d vs %d bytes)", s.file, s.canon, len(got), len(want))
			}
			// The proto3 JSON that Flower's json_format wrote decodes to the same message.
			fromJSON, _ := golden.New(s.typ)
			if err := protojson.Unmarshal(s.js, fromJSON); err != nil {
				t.Fatalf("%s: json: %v", s.file, err)
			}
			if !proto.Equal(fromJSON, m) {
				t.Errorf("%s: JSON form and binary form differ", s.file)
			}
		}
	}
	if files != 225 {
		t.Errorf("checked %d message files, want 225", files)
	}
}

// methodType returns the full request (or response) type name of a method
// path such as /flwr.proto.Fleet/CreateNode, from our generated descriptors.
func methodType(t *testing.T, method string, request bool) string {
	t.Helper()
	parts := strings.Split(strings.TrimPrefix(method, "/"), "/")
	if len(parts) != 2 {
		t.Fatalf("bad method path %q", method)
	}
	d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(parts[0]))
	if err != nil {
		t.Fatalf("%s: %v", method, err)
	}
	md := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(parts[1]))
	if md == nil {
		t.Fatalf("%s: no such method in our .proto", method)
	}
	if request {
		return string(md.Input().FullName())
	}
	return string(md.Output().FullName())
}

func assertNoUnknown(t *testing.T, name string, m protoreflect.Message) {
	t.Helper()
	if len(m.GetUnknown()) > 0 {
		t.Errorf("%s: %s has unknown fields %x", name, m.Descriptor().FullName(), m.GetUnknown())
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsMap():
			if fd.MapValue().Message() != nil {
				v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
					assertNoUnknown(t, name, mv.Message())
					return true
				})
			}
		case fd.IsList():
			if fd.Message() != nil {
				for i := 0; i < v.List().Len(); i++ {
					assertNoUnknown(t, name, v.List().Get(i).Message())
				}
			}
		case fd.Message() != nil:
			assertNoUnknown(t, name, v.Message())
		}
		return true
	})
}
