package flwr129_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"os/exec"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/flowerenv"
)

// describe prints, as JSON, every message and service that Flower 1.29.0's
// own generated Python code declares in the files we describe: what a
// peer's bytes mean is decided there.
const describe = `
import json, importlib
from google.protobuf.descriptor import FieldDescriptor as F
mods = ["node","error","transport","recorddict","message","run","fab","heartbeat","log",
        "federation_config","federation","fleet","appio","serverappio","control"]
msgs, svcs = {}, {}
def name(full):
    return full[len("flwr.proto."):] if full.startswith("flwr.proto.") else full
def walk(d):
    fields = []
    for f in d.fields:
        fields.append({"name": f.name, "number": f.number, "type": f.type, "repeated": f.label == F.LABEL_REPEATED,
            "message": name(f.message_type.full_name) if f.message_type else "",
            "oneof": f.containing_oneof.name if f.containing_oneof and not f.containing_oneof.name.startswith("_") else ""})
    msgs[name(d.full_name)] = sorted(fields, key=lambda f: f["number"])
    for n in d.nested_types:
        walk(n)
for m in mods:
    fd = importlib.import_module("flwr.proto." + m + "_pb2").DESCRIPTOR
    for d in fd.message_types_by_name.values():
        walk(d)
    for s in fd.services_by_name.values():
        svcs[s.name] = sorted([{"name": x.name, "input": name(x.input_type.full_name), "output": name(x.output_type.full_name),
            "server_streaming": x.server_streaming, "client_streaming": x.client_streaming} for x in s.methods], key=lambda x: x["name"])
print(json.dumps({"messages": msgs, "services": svcs}))
`

type field struct {
	Name     string `json:"name"`
	Number   int    `json:"number"`
	Type     int    `json:"type"`
	Repeated bool   `json:"repeated"`
	Message  string `json:"message"`
	Oneof    string `json:"oneof"`
}

type method struct {
	Name            string `json:"name"`
	Input           string `json:"input"`
	Output          string `json:"output"`
	ServerStreaming bool   `json:"server_streaming"`
	ClientStreaming bool   `json:"client_streaming"`
}

func python(t *testing.T, f flowerenv.Flower, script string) []byte {
	t.Helper()
	cmd := exec.Command(f.Python, "-c", script)
	cmd.Env = f.Env("PYTHONPATH=" + f.PythonPath)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, stderr.String())
	}
	return out
}

func short(full protoreflect.FullName) string {
	return strings.TrimPrefix(string(full), flwr129.ProtoPackage+".")
}

// TestDescriptorsMatchFlower checks every message and service declared
// here against Flower 1.29.0's own: the same field numbers, types,
// cardinalities, message types and oneofs, and the same methods.
func TestDescriptorsMatchFlower(t *testing.T) {
	f := flowerenv.Flower129(t)
	var flower struct {
		Messages map[string][]field  `json:"messages"`
		Services map[string][]method `json:"services"`
	}
	if err := json.Unmarshal(python(t, f, describe), &flower); err != nil {
		t.Fatal(err)
	}
	checked, services := 0, 0
	protoregistry.GlobalFiles.RangeFilesByPackage(flwr129.ProtoPackage, func(fd protoreflect.FileDescriptor) bool {
		if fd.Package() != flwr129.ProtoPackage {
			return true
		}
		var walk func(protoreflect.MessageDescriptors)
		walk = func(ms protoreflect.MessageDescriptors) {
			for i := range ms.Len() {
				md := ms.Get(i)
				if md.IsMapEntry() {
					continue
				}
				walk(md.Messages())
				want, ok := flower.Messages[short(md.FullName())]
				if !ok {
					t.Errorf("%s: Flower 1.29.0 declares no such message", md.FullName())
					continue
				}
				var got []field
				for j := range md.Fields().Len() {
					fd := md.Fields().Get(j)
					g := field{Name: string(fd.Name()), Number: int(fd.Number()), Type: int(descriptorType(fd)), Repeated: fd.Cardinality() == protoreflect.Repeated}
					if fd.Message() != nil {
						g.Message = short(fd.Message().FullName())
					}
					if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() {
						g.Oneof = string(o.Name())
					}
					got = append(got, g)
				}
				slices.SortFunc(got, func(a, b field) int { return a.Number - b.Number })
				if !slices.Equal(got, want) {
					t.Errorf("%s differs from Flower 1.29.0's:\n ours   %+v\n Flower %+v", md.FullName(), got, want)
				}
				checked++
			}
		}
		walk(fd.Messages())
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			want := flower.Services[string(sd.Name())]
			var got []method
			for j := range sd.Methods().Len() {
				m := sd.Methods().Get(j)
				got = append(got, method{Name: string(m.Name()), Input: short(m.Input().FullName()), Output: short(m.Output().FullName()),
					ServerStreaming: m.IsStreamingServer(), ClientStreaming: m.IsStreamingClient()})
			}
			slices.SortFunc(got, func(a, b method) int { return strings.Compare(a.Name, b.Name) })
			if !slices.Equal(got, want) {
				t.Errorf("service %s differs from Flower 1.29.0's:\n ours   %+v\n Flower %+v", sd.Name(), got, want)
			}
			services++
		}
		return true
	})
	if checked < 100 || services != 3 {
		t.Fatalf("checked %d messages and %d services; want every message (over 100) and the 3 services", checked, services)
	}
}

// descriptorType is the FieldDescriptorProto.Type number of fd, which is
// what Python's FieldDescriptor.type reports.
func descriptorType(fd protoreflect.FieldDescriptor) protoreflect.Kind { return fd.Kind() }

// roundTrip builds messages with every kind of field set in Flower's
// Python and prints their deterministic bytes.
const roundTrip = `
import json
from flwr.proto import fleet_pb2, message_pb2, recorddict_pb2, run_pb2, control_pb2, appio_pb2, node_pb2, transport_pb2, error_pb2
rd = recorddict_pb2.RecordDict(items=[
  recorddict_pb2.RecordDict.Item(key="arrays", array_record=recorddict_pb2.ArrayRecord(items=[
    recorddict_pb2.ArrayRecord.Item(key="w", value=recorddict_pb2.Array(dtype="float32", shape=[2, 3], stype="numpy.ndarray", data=bytes(range(24))))])),
  recorddict_pb2.RecordDict.Item(key="metrics", metric_record=recorddict_pb2.MetricRecord(items=[
    recorddict_pb2.MetricRecord.Item(key="loss", value=recorddict_pb2.MetricRecordValue(double=0.25)),
    recorddict_pb2.MetricRecord.Item(key="n", value=recorddict_pb2.MetricRecordValue(sint_list=recorddict_pb2.SintList(vals=[-1, 2])))])),
  recorddict_pb2.RecordDict.Item(key="config", config_record=recorddict_pb2.ConfigRecord(items=[
    recorddict_pb2.ConfigRecord.Item(key="lr", value=recorddict_pb2.ConfigRecordValue(string="0.1")),
    recorddict_pb2.ConfigRecord.Item(key="b", value=recorddict_pb2.ConfigRecordValue(bytes_list=recorddict_pb2.BytesList(vals=[b"x", b""])))]))])
md = message_pb2.Metadata(run_id=2**64-5, message_id="ab"*32, src_node_id=1, dst_node_id=2**63+7, reply_to_message_id="cd"*32,
  group_id="3", ttl=43200.5, message_type="train", created_at=1777000000.125)
tree = message_pb2.ObjectTree(object_id="ab"*32, children=[message_pb2.ObjectTree(object_id="ef"*32)])
out = {
 "PushMessagesRequest": fleet_pb2.PushMessagesRequest(node=node_pb2.Node(node_id=9), messages_list=[message_pb2.Message(metadata=md, content=rd)],
    message_object_trees=[tree], clientapp_runtime_list=[1.5]),
 "PullMessagesResponse": fleet_pb2.PullMessagesResponse(reconnect=fleet_pb2.Reconnect(reconnect=5),
    messages_list=[message_pb2.Message(metadata=md, error=error_pb2.Error(code=-5, reason="Node Unavailable"))], message_object_trees=[tree]),
 "PushMessagesResponse": fleet_pb2.PushMessagesResponse(results={"b": 0, "a": 7}, objects_to_push=["ab"*32]),
 "ListRunsResponse": control_pb2.ListRunsResponse(now="2026-04-01T00:00:00+00:00", run_dict={
    7: run_pb2.Run(run_id=7, fab_id="flwrlabs/quickstart-numpy", fab_version="1.0.0", fab_hash="00"*32,
      override_config={"num-server-rounds": transport_pb2.Scalar(sint64=3), "x": transport_pb2.Scalar(double=0.5)},
      pending_at="a", status=run_pb2.RunStatus(status="finished", sub_status="completed"), federation="@none/default",
      bytes_sent=10, bytes_recv=2**40, clientapp_runtime=2.5, run_type="serverapp"),
    3: run_pb2.Run(run_id=3)}),
 "StartRunResponse": control_pb2.StartRunResponse(run_id=0),
 "NodeInfo": node_pb2.NodeInfo(node_id=5, status="online", online_until=0.0, heartbeat_interval=30, public_key=b"\x04pk"),
 "PullAppInputsResponse": appio_pb2.PullAppInputsResponse(context=message_pb2.Context(run_id=3, node_id=1,
    node_config={"a": transport_pb2.Scalar(bool=True)}, state=rd, run_config={"u": transport_pb2.Scalar(uint64=2**64-1)})),
 "PushObjectRequest": message_pb2.PushObjectRequest(node=node_pb2.Node(node_id=1), run_id=4, object_id="ab"*32, object_content=b"Array  3\x00abc"),
}
print(json.dumps({k: v.SerializeToString(deterministic=True).hex() for k, v in out.items()}))
`

// TestRoundTripFlowerBytes decodes bytes that Flower 1.29.0's Python
// protobuf wrote and encodes them again: the same bytes come out, so no
// field was lost or misread.
func TestRoundTripFlowerBytes(t *testing.T) {
	f := flowerenv.Flower129(t)
	var got map[string]string
	if err := json.Unmarshal(python(t, f, roundTrip), &got); err != nil {
		t.Fatal(err)
	}
	msgs := map[string]proto.Message{
		"PushMessagesRequest":   &flwr129.PushMessagesRequest{},
		"PullMessagesResponse":  &flwr129.PullMessagesResponse{},
		"PushMessagesResponse":  &flwr129.PushMessagesResponse{},
		"ListRunsResponse":      &flwr129.ListRunsResponse{},
		"StartRunResponse":      &flwr129.StartRunResponse{},
		"NodeInfo":              &flwr129.NodeInfo{},
		"PullAppInputsResponse": &flwr129.PullAppInputsResponse{},
		"PushObjectRequest":     &flwr129.PushObjectRequest{},
	}
	for name, m := range msgs {
		b, err := hex.DecodeString(got[name])
		if err != nil || len(b) == 0 && name != "StartRunResponse" {
			t.Fatalf("%s: no bytes from Python (%v)", name, err)
		}
		if err := (proto.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(b, m); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if u := m.ProtoReflect().GetUnknown(); len(u) > 0 {
			t.Errorf("%s: %d bytes of fields we do not know", name, len(u))
		}
		again, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(again, b) {
			t.Errorf("%s: re-encoded bytes differ:\n Flower %x\n ours   %x", name, b, again)
		}
	}
	// A few values read back, so that a swapped field number cannot hide.
	pm := msgs["PushMessagesRequest"].(*flwr129.PushMessagesRequest)
	md := pm.GetMessagesList()[0].GetMetadata()
	if md.GetDstNodeId() != 1<<63+7 || md.GetTtl() != 43200.5 || md.GetMessageType() != "train" || pm.GetClientappRuntimeList()[0] != 1.5 {
		t.Errorf("PushMessagesRequest read as %v", pm)
	}
	if arr := pm.GetMessagesList()[0].GetContent().GetItems()[0].GetArrayRecord().GetItems()[0].GetValue(); len(arr.GetData()) != 24 || arr.GetShape()[1] != 3 {
		t.Errorf("array read as %v", arr)
	}
	sr := msgs["StartRunResponse"].(*flwr129.StartRunResponse)
	if sr.RunId == nil || sr.GetRunId() != 0 {
		t.Errorf("StartRunResponse.run_id = 0 set explicitly must read as present: %v", sr)
	}
	lr := msgs["ListRunsResponse"].(*flwr129.ListRunsResponse)
	if r := lr.GetRunDict()[7]; r.GetOverrideConfig()["num-server-rounds"].GetSint64() != 3 || r.GetBytesRecv() != 1<<40 {
		t.Errorf("ListRunsResponse read as %v", lr)
	}
}
