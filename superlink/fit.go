package superlink

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/sepal-fl/sepal/flwrproto"
)

// fitResults returns the first results of list whose PullTaskResResponse
// stays within limit bytes (at least one). The results left out are not
// lost: a result delivered stays in the state until the run's next
// PullTaskRes no longer asks for it, and the ServerApp asks again for
// those it lacks, so they come in the next responses. Without it, 16
// results of a 32 MiB model make a response just over the 512 MiB a gRPC
// message may hold, which fails every time it is asked again: the run
// hangs.
func fitResults(list []*flwrproto.TaskRes, limit int) []*flwrproto.TaskRes {
	size := 0
	for i, r := range list {
		n := proto.Size(r)
		size += protowire.SizeTag(1) + protowire.SizeBytes(n) // field 1, task_res_list
		if size > limit && i > 0 {
			return list[:i]
		}
	}
	return list
}
