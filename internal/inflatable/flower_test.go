package inflatable_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"os/exec"
	"slices"
	"testing"

	"github.com/sepal-fl/sepal/app"
	"github.com/sepal-fl/sepal/flwrproto/flwr129"
	"github.com/sepal-fl/sepal/internal/flowerenv"
	"github.com/sepal-fl/sepal/internal/inflatable"
)

// flowerMessage deflates, with Flower 1.29.0's own Python, a message of
// two arrays (one of two chunks, one of zeros whose equal chunks are one
// object), a ConfigRecord with a non-ASCII string and a MetricRecord.
const flowerMessage = `
import json
import numpy as np
from flwr.common import ArrayRecord, ConfigRecord, MetricRecord, RecordDict, Metadata
from flwr.common.message import make_message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
a = np.arange(1_500_000, dtype=np.float32)
z = np.zeros(3_000_000, dtype=np.float32)
rd = RecordDict({"arrays": ArrayRecord([a, z]),
    "config": ConfigRecord({"server-round": 1, "lr": 0.1, "name": "h\u00e9llo \U0001F33C"}),
    "metrics": MetricRecord({"num-examples": 10, "loss": 0.5})})
md = Metadata(run_id=7, message_id="", src_node_id=1, dst_node_id=42, reply_to_message_id="",
    group_id="1", created_at=1760000000.25, ttl=43200.0, message_type="train")
m = make_message(metadata=md, content=rd)
objs = get_all_nested_objects(m)
def tree(t): return [t.object_id, [tree(c) for c in t.children]]
print(json.dumps({"order": list(objs.keys()),
    "small": {k: v.deflate().hex() for k, v in objs.items() if len(v.deflate()) < 4096},
    "tree": tree(get_object_tree(m))}))
`

func npy(t *testing.T, values []float32) []byte {
	data := make([]byte, 4*len(values))
	for i, v := range values {
		binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
	}
	b, err := app.EncodeNPY(app.Array{DType: "float32", Shape: []int{len(values)}, Data: data})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func treeJSON(t *inflatable.Tree) []any {
	kids := []any{}
	for _, c := range t.Children {
		kids = append(kids, treeJSON(c))
	}
	return []any{t.ID, kids}
}

// TestFlowerEncoding builds the message Flower 1.29.0 deflates in
// flowerMessage and finds every object id, the small objects' bytes and
// the object tree the same.
func TestFlowerEncoding(t *testing.T) {
	f := flowerenv.Flower129(t)
	cmd := exec.Command(f.Python, "-c", flowerMessage)
	cmd.Env = f.Env("PYTHONPATH=" + f.PythonPath)
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("Flower's Python: %v\n%s", err, stderr)
	}
	var want struct {
		Order []string
		Small map[string]string
		Tree  []any
	}
	if err := json.Unmarshal(out, &want); err != nil {
		t.Fatal(err)
	}

	a := make([]float32, 1_500_000)
	for i := range a {
		a[i] = float32(i)
	}
	arrays := inflatable.ArrayRecord([]string{"0", "1"}, []*inflatable.Tree{
		inflatable.Array("float32", []int{len(a)}, "numpy.ndarray", npy(t, a)),
		inflatable.Array("float32", []int{3_000_000}, "numpy.ndarray", npy(t, make([]float32, 3_000_000))),
	})
	config, err := inflatable.ConfigRecord(&flwr129.ConfigRecord{Items: []*flwr129.ConfigRecord_Item{
		{Key: "server-round", Value: &flwr129.ConfigRecordValue{Value: &flwr129.ConfigRecordValue_Sint64{Sint64: 1}}},
		{Key: "lr", Value: &flwr129.ConfigRecordValue{Value: &flwr129.ConfigRecordValue_Double{Double: 0.1}}},
		{Key: "name", Value: &flwr129.ConfigRecordValue{Value: &flwr129.ConfigRecordValue_String_{String_: "h\u00e9llo \U0001F33C"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	metrics, err := inflatable.MetricRecord(&flwr129.MetricRecord{Items: []*flwr129.MetricRecord_Item{
		{Key: "num-examples", Value: &flwr129.MetricRecordValue{Value: &flwr129.MetricRecordValue_Sint64{Sint64: 10}}},
		{Key: "loss", Value: &flwr129.MetricRecordValue{Value: &flwr129.MetricRecordValue_Double{Double: 0.5}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	content := inflatable.RecordDict([]string{"arrays", "config", "metrics"}, []*inflatable.Tree{arrays, config, metrics})
	msg, err := inflatable.Message(&flwr129.Metadata{RunId: 7, MessageId: "ignored", SrcNodeId: 1, DstNodeId: 42, GroupId: "1",
		CreatedAt: 1760000000.25, Ttl: 43200, MessageType: "train"}, content, nil)
	if err != nil {
		t.Fatal(err)
	}

	var order []string
	for _, o := range msg.Objects() {
		order = append(order, o.ID)
		if w, ok := want.Small[o.ID]; ok && hex.EncodeToString(o.Content) != w {
			t.Errorf("object %s: bytes\n%q\nFlower's\n%q", o.ID, o.Content, must(hex.DecodeString(w)))
		}
		if inflatable.ID(o.Content) != o.ID {
			t.Errorf("object %s hashes to %s", o.ID, inflatable.ID(o.Content))
		}
	}
	if !slices.Equal(order, want.Order) {
		t.Fatalf("objects (post order)\n%v\nFlower's\n%v", order, want.Order)
	}
	got, _ := json.Marshal(treeJSON(msg))
	wantTree, _ := json.Marshal(want.Tree)
	if !bytes.Equal(got, wantTree) {
		t.Errorf("object tree\n%s\nFlower's\n%s", got, wantTree)
	}
	if len(want.Small) < 6 {
		t.Errorf("Flower gave %d small objects to compare byte for byte, want the 6 that are not chunks", len(want.Small))
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
