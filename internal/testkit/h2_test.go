package testkit

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
)

// The head and n zero bytes decode as the PushTaskResRequest described.
func TestPushTaskResHead(t *testing.T) {
	const n = 70000
	head := PushTaskResHead(-5, 42, "6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1", n)
	msg := append(head, make([]byte, n)...)
	var req flwrproto.PushTaskResRequest
	if err := proto.Unmarshal(msg, &req); err != nil {
		t.Fatal(err)
	}
	if len(req.TaskResList) != 1 {
		t.Fatalf("%d TaskRes", len(req.TaskResList))
	}
	r := req.TaskResList[0]
	a := r.GetTask().GetRecordset().GetParameters()["fitres.parameters"].GetDataValues()
	if r.RunId != -5 || r.GetTask().GetProducer().GetNodeId() != 42 || !r.GetTask().GetConsumer().GetAnonymous() ||
		r.GetTask().GetAncestry()[0] != "6fc3d49b-fcc5-4c29-9be3-8c684ba3f7a1" || len(a) != 1 || len(a[0].Data) != n || a[0].Dtype != "<f4" {
		t.Fatalf("decoded %v", r)
	}
}
