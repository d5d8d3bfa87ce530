package superlink

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
)

// TestFitResults: a PullTaskRes response holds the longest prefix of the
// results that fits in the limit, and always the first.
func TestFitResults(t *testing.T) {
	res := func(n int) *flwrproto.TaskRes {
		return &flwrproto.TaskRes{TaskId: "r", Task: &flwrproto.Task{Recordset: &flwrproto.RecordSet{Parameters: map[string]*flwrproto.ParametersRecord{
			"p": {DataKeys: []string{"0"}, DataValues: []*flwrproto.Array{{Data: make([]byte, n)}}}}}}}
	}
	list := []*flwrproto.TaskRes{res(1000), res(1000), res(1000), res(5000)}
	one := proto.Size(&flwrproto.PullTaskResResponse{TaskResList: list[:1]})
	for _, tc := range []struct {
		limit, want int
	}{
		{1 << 20, 4},
		{3*one + 10, 3},
		{3*one - 1, 2},
		{one, 1},
		{10, 1}, // the first alone does not fit: sent anyway (the send fails as before)
	} {
		got := fitResults(list, tc.limit)
		if len(got) != tc.want {
			t.Errorf("limit %d: %d results, want %d", tc.limit, len(got), tc.want)
		}
		if size := proto.Size(&flwrproto.PullTaskResResponse{TaskResList: got}); len(got) > 1 && size > tc.limit {
			t.Errorf("limit %d: response of %d bytes", tc.limit, size)
		}
	}
}
